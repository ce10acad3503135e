"""Model FLOPs utilisation: the task's analytical FLOPs per step (mmjax/flops.py) over the
peak of the chips running it, from a table of accelerator peaks or measured once on CPU."""

import time

import jax
import jax.numpy as jnp

# Dense bfloat16 peak FLOP/s per chip, by `device_kind` prefix (Cloud TPU and NVIDIA data
# sheets; the H100/H200 figure is SXM without sparsity). float32 steps on accelerators run
# their matmuls at bfloat16-pass precision by default, so the same peak is the reference.
ACCELERATOR_PEAKS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12, "TPU v5e": 197e12,
    "TPU v5p": 459e12, "TPU v5": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
    "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA GH200": 989e12,
    "NVIDIA A100": 312e12,
}


def measured_peak(dtype="float32", size=1024, reps=5) -> float:
    """FLOP/s of the best of `reps` timed [size, size] matmuls on the first device: the
    reference on a CPU, where no data sheet applies (about 0.2 s)."""
    a = jnp.ones((size, size), dtype)
    matmul = jax.jit(jnp.matmul)
    matmul(a, a).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        matmul(a, a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def chip_peak(device, dtype="float32") -> tuple[float, str]:
    """(peak FLOP/s of one chip, where the figure comes from)."""
    for prefix, peak in ACCELERATOR_PEAKS.items():
        if device.device_kind.startswith(prefix):
            return peak, f"{prefix} data sheet"
    return measured_peak(dtype), f"measured {dtype} matmul on {device.platform}"


class MFU:
    """train/mfu from examples/s: flops_per_step x steps/s / (chips x chip peak). On CPU the
    simulated devices of one process share its cores, so the chips are the processes."""

    def __init__(self, flops_per_step, dtype="float32"):
        device = jax.devices()[0]
        self.flops_per_step = flops_per_step
        self.peak, self.source = chip_peak(device, dtype) if flops_per_step else (None, None)
        self.chips = jax.process_count() if device.platform == "cpu" else jax.device_count()

    def __call__(self, steps_per_s) -> dict:
        if not self.flops_per_step:
            return {}
        return {"train/mfu": self.flops_per_step * steps_per_s / (self.chips * self.peak)}
