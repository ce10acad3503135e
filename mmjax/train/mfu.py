"""Model FLOPs utilisation: the task's analytical FLOPs per step (mmjax/flops.py) over the
peak of the chips running it: a data sheet by exact device kind, a peak the config states,
or, on CPU, one matmul calibration stored per CPU. Anything else reports no MFU."""

import hashlib
import json
import os
import pathlib
import platform
import time

import jax
import jax.numpy as jnp

# Dense bfloat16 peak FLOP/s per chip (no sparsity), by the exact `device_kind` JAX reports
# (Cloud TPU system-architecture pages; NVIDIA data sheets: H100 SXM 989, PCIe 756, NVL 835;
# H200 SXM 989, NVL 835; A100 SXM and PCIe 312). float32 steps on accelerators run their
# matmuls at bfloat16-pass precision by default, so the same peak is the reference. A kind
# not listed (a new card, a TPU v2/v3 core) gets no MFU rather than a guess: state its peak
# with --config.train.peak_flops_per_chip.
DATA_SHEET_PEAKS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12, "TPU v5e": 197e12,
    "TPU v5": 459e12, "TPU v5p": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
    "NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100 PCIe": 756e12, "NVIDIA H100 NVL": 835e12,
    "NVIDIA H200": 989e12, "NVIDIA H200 NVL": 835e12,
    "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA A100 80GB PCIe": 312e12, "NVIDIA A100-PCIE-40GB": 312e12,
}

# The CPU calibration: the best of REPS jitted SIZE x SIZE matmuls (compute-bound on CPU;
# benchmarks/train_step.py measures the same size in its own process).
CALIBRATION_SIZE, CALIBRATION_REPS = 2048, 10


def measured_peak(dtype="float32", size=CALIBRATION_SIZE, reps=5) -> float:
    """FLOP/s of the best of `reps` timed [size, size] matmuls on the first device."""
    a = jnp.ones((size, size), dtype)
    matmul = jax.jit(jnp.matmul)
    matmul(a, a).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        matmul(a, a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def cache_dir() -> pathlib.Path:
    """$MMJAX_CACHE_DIR, else $XDG_CACHE_HOME/mmjax, else ~/.cache/mmjax."""
    if os.environ.get("MMJAX_CACHE_DIR"):
        return pathlib.Path(os.environ["MMJAX_CACHE_DIR"]).expanduser()
    return pathlib.Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "mmjax"


def cpu_identity() -> str:
    """The CPU model, a hash of its feature flags, and the cores this process may use."""
    model, flags = "", ""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "model name" and not model:
                model = value
            if key in ("flags", "Features") and not flags:
                flags = hashlib.sha256(" ".join(sorted(value.split())).encode()).hexdigest()[:12]
    except OSError:
        pass
    model = model or platform.processor() or platform.machine()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}; flags {flags or '?'}; {cores} cores"


def cpu_calibration(dtype="float32") -> tuple[float, str]:
    """(FLOP/s, where from) of this CPU, measured once and stored in cache_dir()/cpu_peaks.json
    (keyed by cpu_identity(), dtype and jax version), so every run on one machine divides by
    the same number."""
    store = cache_dir() / "cpu_peaks.json"
    key = f"{cpu_identity()}; {dtype}; jax {jax.__version__}"
    try:
        entries = json.loads(store.read_text())
    except (OSError, ValueError):
        entries = {}
    entry = entries.get(key)
    if not entry:
        entry = dict(flops=measured_peak(dtype, CALIBRATION_SIZE, CALIBRATION_REPS),
                     measured=time.strftime("%Y-%m-%d %H:%M:%S"),
                     how=f"best of {CALIBRATION_REPS} {CALIBRATION_SIZE}x{CALIBRATION_SIZE} "
                         f"{dtype} matmuls")
        try:  # written whole, then renamed: processes calibrating at once leave one valid file
            store.parent.mkdir(parents=True, exist_ok=True)
            tmp = store.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(entries | {key: entry}, indent=1))
            tmp.replace(store)
        except OSError:
            pass  # read-only home: this run's measurement only
    return entry["flops"], (f"{dtype} CPU calibration of {entry['measured']} ({entry['how']}; "
                            f"{store}; delete it to measure again)")


def chip_peak(device, dtype="float32", stated=0.0) -> tuple[float | None, str]:
    """(peak FLOP/s of one chip or None, where the figure comes from or why there is none)."""
    if stated:
        return float(stated), "train.peak_flops_per_chip"
    if device.device_kind in DATA_SHEET_PEAKS:
        return DATA_SHEET_PEAKS[device.device_kind], f"{device.device_kind} data sheet, bf16 dense"
    if device.platform == "cpu":
        return cpu_calibration(dtype)
    return None, (f"no MFU: no data-sheet peak for device kind {device.device_kind!r}; state "
                  f"one with --config.train.peak_flops_per_chip=<bf16 dense FLOP/s>")


class MFU:
    """train/mfu from steps/s: flops_per_step x steps/s / (chips x chip peak). On CPU the
    simulated devices of one process share its cores, so the chips are the processes."""

    def __init__(self, flops_per_step, dtype="float32", stated_peak=0.0):
        device = jax.devices()[0]
        self.flops_per_step = flops_per_step
        self.peak, self.source = chip_peak(device, dtype, stated_peak) if flops_per_step else (None, None)
        self.chips = jax.process_count() if device.platform == "cpu" else jax.device_count()

    def __call__(self, steps_per_s) -> dict:
        if not (self.flops_per_step and self.peak):
            return {}
        return {"train/mfu": self.flops_per_step * steps_per_s / (self.chips * self.peak)}
