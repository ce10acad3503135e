"""`mmjax compile`: a run's real train step compiled ahead of time for a TPU topology, here.

The step is the one `mmjax train` runs (train/setup.py's Run, train/step.py's jitted step),
lowered with abstract inputs (the state's ShapeDtypeStructs with their shardings, a batch of
the task's spec) over the compile-only devices of `jax.experimental.topologies`, so a CPU
machine with libtpu installed (`launch/install.sh compile`) tells whether a recipe fits a
pod before the pod is booked: XLA:TPU's per-device memory, the analytical FLOPs of the step
(mmjax/flops.py: XLA's cost_analysis counts a scanned layer once) and a step-time bound.
"""

import dataclasses
import math
import os
import re
import time
import types

from mmjax.errors import MeshError, TopologyError

# HBM per chip, from the Cloud TPU docs' system-architecture pages (cloud.google.com/tpu/
# docs/v4, /v5p, /v5e, /v6e); their peak dense bf16 FLOP/s (v4 275e12, v5p 459e12, v5e
# 197e12, v6e 918e12, same docs) is mmjax/train/mfu.py's table, by device kind. v4 and v5p
# names count TensorCores (two a chip, one megacore device); v5e and v6e names count chips.
GiB = 2**30
CHIPS = {
    "v4": dict(prefix="v4", hbm_bytes=32 * GiB, cores_per_chip=2),
    "v5p": dict(prefix="v5", hbm_bytes=95 * GiB, cores_per_chip=2),
    "v5e": dict(prefix="v5e", hbm_bytes=16 * GiB, cores_per_chip=1),
    "v6e": dict(prefix="v6e", hbm_bytes=32 * GiB, cores_per_chip=1),
}
ALIASES = {"v5litepod": "v5e", "v5": "v5p"}
# Chips -> the slice's torus, as the TPU VM accelerator types lay them out (3-D: v4, v5p;
# 2-D: v5e, v6e). A host holds 2x2 chips (see Topology.host_bounds).
GRIDS_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
            128: (4, 4, 8), 192: (4, 4, 12), 256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16),
            2048: (8, 16, 16), 4096: (16, 16, 16)}
GRIDS_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16),
            256: (16, 16)}
CHIPS_PER_HOST = (2, 2, 1)
DEFAULT_MFU = 0.4
# The libtpu environment for compiling without a TPU, set before libtpu loads (the first
# topology): no accelerator-type / worker-hostname warnings, no C++ logging, and no
# /tmp/libtpu_lockfile, which would keep a second compiling process from starting.
TPU_ENV = dict(TPU_WORKER_HOSTNAMES="localhost", TF_CPP_MIN_LOG_LEVEL="3",
               TPU_STDERR_LOG_LEVEL="3", TPU_MIN_LOG_LEVEL="3", ALLOW_MULTIPLE_LIBTPU_LOAD="1")


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str            # as the user wrote it: v5p-256
    generation: str      # v4 | v5p | v5e | v6e
    grid: tuple          # chips per torus dimension
    num_slices: int = 1

    @property
    def chip(self):
        return CHIPS[self.generation]

    @property
    def chips(self):
        return math.prod(self.grid) * self.num_slices

    @property
    def topology_name(self):
        """get_topology_desc's spelling: gen:grid, e.g. v5:4x4x8."""
        return f"{self.chip['prefix']}:{'x'.join(map(str, self.grid))}"

    @property
    def accelerator_type(self):
        """One slice as Cloud TPU names it: v5p-256, v5litepod-16."""
        size = math.prod(self.grid) * self.chip["cores_per_chip"]
        return f"{'v5litepod' if self.generation == 'v5e' else self.generation}-{size}"

    def desc_kwargs(self):
        kwargs = dict(chips_per_host_bounds=self.host_bounds(), num_slices=self.num_slices,
                      wrap=self.wrap())
        if self.chip["cores_per_chip"] == 2:
            kwargs["chip_config_name"] = "megacore"   # one device per chip, not per TensorCore
        return kwargs

    def host_bounds(self):
        """Chips per host: 2x2(x1), except that v5e / v6e slices of up to 8 chips are one VM."""
        if len(self.grid) == 2 and math.prod(self.grid) <= 8:
            return self.grid + (1,)
        return CHIPS_PER_HOST

    def wrap(self):
        """Torus wrap-around links: full 3-D cubes (4x4x4 and up), 2-D dims of 16 chips."""
        if len(self.grid) == 3:
            return (min(self.grid) >= 4,) * 3
        return tuple(d == 16 for d in self.grid) + (False,)


def parse_topology(name, num_slices=1):
    """'v5p-256' / 'v4-32' / 'v5e-16' / 'v5litepod-16' / 'v6e-256' (or 'v5p:4x4x8') -> Topology."""
    match = re.fullmatch(r"(v\d+[a-z]*)[-:]([\dx]+)", name.strip().lower())
    generation = match and ALIASES.get(match.group(1), match.group(1))
    if not match or generation not in CHIPS:
        raise TopologyError(f"unknown TPU {name!r}: write GENERATION-SIZE as Cloud TPU names it, "
                            f"e.g. v5p-256, v4-32, v5e-16, v6e-256 (generations: {', '.join(CHIPS)})")
    if num_slices < 1:
        raise TopologyError(f"--num_slices must be at least 1, got {num_slices}")
    return Topology(name, generation, _grid(name, generation, match.group(2)), num_slices)


def _grid(name, generation, size):
    """The chip grid of a slice size ('256': TensorCores or chips) or an explicit '4x4x8'."""
    per_chip = CHIPS[generation]["cores_per_chip"]
    grids = GRIDS_3D if per_chip == 2 else GRIDS_2D
    dims = len(next(iter(grids.values())))
    if "x" in size:
        grid = tuple(int(d) for d in size.split("x"))
        if len(grid) != dims:
            raise TopologyError(f"{name!r}: {generation} slices are {dims}-D grids")
        return grid
    chips, rem = divmod(int(size), per_chip)
    if rem or chips not in grids:
        unit = "TensorCores (2 a chip)" if per_chip == 2 else "chips"
        sizes = ", ".join(f"{generation}-{c * per_chip}" for c in grids)
        raise TopologyError(f"{name!r}: the size counts {unit}; known slices: {sizes}")
    return grids[chips]


def configure_environment(accelerator_type):
    """libtpu's environment for a compile-only topology; call before the first topology."""
    for key, value in dict(TPU_ENV, TPU_ACCELERATOR_TYPE=accelerator_type).items():
        os.environ.setdefault(key, value)
    import jax
    try:   # the step is compiled for the topology; never take an attached accelerator
        jax.config.update("jax_platforms", "cpu")
    except Exception:  # noqa: BLE001 -- backends already up (in-process callers): harmless
        pass


def topology_devices(topo):
    """The compile-only devices of `topo` (all slices)."""
    configure_environment(topo.accelerator_type)
    from jax.experimental import topologies
    try:
        desc = topologies.get_topology_desc(topo.topology_name, "tpu", **topo.desc_kwargs())
    except RuntimeError as e:
        if "not installed" in str(e):
            raise TopologyError("compiling for TPUs needs libtpu: install it into its own "
                                "environment with `launch/install.sh compile` (jax[tpu])") from None
        raise
    return list(desc.devices)


def stand_in_tokenizer(config):
    """What a train step needs from a tokenizer (the MLM masker's ids, the LM's end of
    document: BERT's [SEP]), without the data."""
    return types.SimpleNamespace(vocab_size=config.model.text.vocab_size, mask_id=103,
                                 special_ids=(0, 101, 102, 103), pad_id=0, eot_id=102)


def abstract_batch(run):
    """ShapeDtypeStructs of one global batch, sharded as `mmjax train` feeds it."""
    import jax
    from mmjax.sharding import batch_sharding
    size, sharding = run.config.train.batch_size, batch_sharding(run.mesh)
    return {k: jax.ShapeDtypeStruct((size, *s.shape), s.dtype, sharding=sharding)
            for k, s in run.task.batch_spec().items()}


def set_slices(config, num_slices):
    """Multi-slice: the mesh's across-slice (DCN) sizes must multiply to the slice count; a
    config that sets none puts the slices on `dcn_data` (data parallel over DCN)."""
    from mmjax.sharding import MESH_AXES
    dcn = {a: config.mesh.get(f"dcn_{a}", 1) for a in MESH_AXES}
    if math.prod(dcn.values()) == 1 and num_slices > 1:
        config.mesh.dcn_data = num_slices
    elif math.prod(dcn.values()) != num_slices:
        raise MeshError(f"mesh dcn_* sizes {dcn} multiply to {math.prod(dcn.values())} but "
                        f"--num_slices is {num_slices}; make them match")


def compile_step(run):
    """(compiled step or None, error text): None when XLA runs out of memory."""
    import jax
    try:
        return run.train_step().compile(run.abstract_state, abstract_batch(run)), None
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        return None, str(e)


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
# XLA:TPU's out-of-memory messages: 'the total memory required for HLO temporaries (31.40G)
# exceeds available HBM (30.75G)', or 'Used 20.35G of 15.75G hbm'.
_OOM_BYTES = (r"required for [\w ]+ \(([\d.]+)([KMGT]?)i?B?\)", r"Used ([\d.]+)([KMGT]?)i?B? of")


def bytes_from_error(message):
    """The per-device bytes XLA:TPU said it needs in an out-of-memory error, or None."""
    for pattern in _OOM_BYTES:
        match = re.search(pattern, message)
        if match:
            return int(float(match.group(1)) * _UNITS[match.group(2)])
    return None


def memory_figures(compiled):
    """Per-device bytes of the compiled step (memory_analysis); peak as XLA reports it, else
    arguments + outputs - aliased + temporaries."""
    a = compiled.memory_analysis()
    fields = dict(argument_bytes="argument_size_in_bytes", output_bytes="output_size_in_bytes",
                  alias_bytes="alias_size_in_bytes", temp_bytes="temp_size_in_bytes",
                  generated_code_bytes="generated_code_size_in_bytes")
    figures = {k: int(getattr(a, f, 0)) for k, f in fields.items()}
    peak = getattr(a, "peak_memory_in_bytes", None)
    figures["peak_bytes_per_device"] = int(peak) if peak else (
        figures["argument_bytes"] + figures["output_bytes"] - figures["alias_bytes"] + figures["temp_bytes"])
    return figures


def knobs(config, state_fraction):
    """The config changes that lower per-device memory, most effective first."""
    remat, accum, mesh = config.model.remat, config.train.grad_accum_steps, config.mesh
    activations = []
    if remat != "full":
        activations.append(f"--config.model.remat={'dots' if remat == 'none' else 'full'} "
                           f"(recompute activations in the backward pass)")
    exact = "; contrastive negatives stay exact" if "clip" in config.task else ""
    activations.append(f"--config.train.grad_accum_steps={2 * accum} (same global batch in "
                       f"{2 * accum} microbatches{exact})")
    activations.append(f"--config.train.batch_size={config.train.batch_size // 2} (a smaller global batch)")
    state = []
    if mesh.fsdp != -1 and mesh.data != 1:
        state.append("--config.mesh.fsdp=-1 --config.mesh.data=1 (shard params and optimizer "
                     "state over every device: bigger FSDP)")
    if not config.model.scan:
        state.append("--config.model.scan=True (one compiled layer, scanned)")
    return state + activations if state_fraction > 0.5 else activations + state


def state_bytes_per_device(abstract_state):
    """The train state's bytes on each device, from its shardings' shard shapes."""
    import jax
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
               for x in jax.tree.leaves(abstract_state))


def compile_config(config, topology, num_slices=1, mfu=DEFAULT_MFU, log=print):
    """Compiles `config`'s train step for `topology` ('v5p-256'); logs a summary and returns
    the figures (the JSON line of `mmjax compile`)."""
    topo = parse_topology(topology, num_slices)
    set_slices(config, num_slices)
    devices = topology_devices(topo)
    from mmjax.train.setup import setup
    if config.model.attention == "cudnn":   # 'auto' reads the mesh's platform: the TPU's
        log("model.attention=cudnn: compiled with 'xla', what 'auto' picks on a TPU below "
            "model.splash_min_length (nn/attention.py)")
        config.model.attention = "xla"
    run = setup(config, tokenizer=stand_in_tokenizer(config), devices=devices)
    hosts = len({d.process_index for d in devices})
    log(f"{topology}{f' x {num_slices} slices' if num_slices > 1 else ''}: {len(devices)} "
        f"{devices[0].device_kind} chips on {hosts} hosts; mesh "
        + " ".join(f"{k}={v}" for k, v in run.mesh.shape.items())
        + f"; global batch {config.train.batch_size}")
    start = time.perf_counter()
    compiled, error = compile_step(run)
    result = dict(topology=topology, num_slices=num_slices, devices=len(devices), hosts=hosts,
                  mesh=dict(run.mesh.shape), global_batch=config.train.batch_size,
                  compile_s=round(time.perf_counter() - start, 1),
                  **fit(compiled, error, run.abstract_state, topo.chip["hbm_bytes"]),
                  **step_time(run.task.train_flops(), devices, mfu))
    if not result["fits"]:
        result["knobs"] = knobs(config, result["state_bytes_per_device"] / result["hbm_bytes"])
    for line in summary(result, topo):
        log(line)
    return result


def fit(compiled, error, abstract_state, hbm_bytes):
    """Per-device memory and whether it fits: XLA's plan, or the bytes its out-of-memory
    error names."""
    figures = dict(hbm_bytes=hbm_bytes, state_bytes_per_device=state_bytes_per_device(abstract_state))
    if compiled is None:
        usable = re.search(r"available HBM \(([\d.]+)([KMGT]?)", error)
        if usable:
            figures["hbm_usable_bytes"] = int(float(usable.group(1)) * _UNITS[usable.group(2)])
        return dict(figures, peak_bytes_per_device=bytes_from_error(error), fits=False,
                    error=error.strip().splitlines()[0][:300])
    figures.update(memory_figures(compiled))
    return dict(figures, fits=figures["peak_bytes_per_device"] <= hbm_bytes)


def step_time(flops, devices, mfu):
    """The step-time bound at 100% MFU and at `mfu`, from the analytical FLOPs and the
    chips' data-sheet bf16 peak (mmjax/train/mfu.py)."""
    from mmjax.train.mfu import chip_peak
    peak_flops, _ = chip_peak(devices[0], "bfloat16")
    if not (flops and peak_flops):
        return dict(flops_per_step=None, step_time_bound_s=None, mfu=mfu, step_time_at_mfu_s=None)
    bound = flops / (len(devices) * peak_flops)
    return dict(flops_per_step=int(flops), step_time_bound_s=bound, mfu=mfu,
                step_time_at_mfu_s=bound / mfu, peak_flops_per_chip=peak_flops)


def _gib(n):
    return "?" if n is None else f"{n / GiB:.2f} GiB"


def summary(r, topo):
    """The human-readable lines before the JSON line."""
    lines = [f"compiled in {r['compile_s']:.0f} s" if "error" not in r
             else f"XLA ran out of memory compiling: {r['error']}"]
    if "temp_bytes" in r:
        lines.append(f"per device: arguments {_gib(r['argument_bytes'])}, outputs "
                     f"{_gib(r['output_bytes'])} ({_gib(r['alias_bytes'])} of them donated "
                     f"arguments), temporaries {_gib(r['temp_bytes'])}, generated code "
                     f"{r['generated_code_bytes'] / 2**20:.0f} MiB")
    peak = r["peak_bytes_per_device"]
    share = "" if not peak else f" ({r['state_bytes_per_device'] / peak:.1%} of the peak)"
    lines.append(f"train state (params + optimizer): {_gib(r['state_bytes_per_device'])} per device{share}")
    verdict = "fits" if r["fits"] else "DOES NOT FIT"
    needs = "needs at least" if "error" in r else "peak"
    usable = f" ({_gib(r['hbm_usable_bytes'])} usable)" if "hbm_usable_bytes" in r else ""
    lines.append(f"{needs} {_gib(peak)} per device of {_gib(r['hbm_bytes'])} HBM{usable} "
                 f"({topo.generation}): {verdict}")
    if r["flops_per_step"]:
        lines.append(f"FLOPs per step (analytical, mmjax/flops.py): {r['flops_per_step']:.3e}; step time "
                     f">= {r['step_time_bound_s'] * 1e3:.1f} ms at 100% MFU, "
                     f"{r['step_time_at_mfu_s'] * 1e3:.1f} ms at {r['mfu']:.0%} MFU "
                     f"({r['devices']} chips x {r['peak_flops_per_chip'] / 1e12:.0f} TFLOP/s bf16)")
    if not r["fits"]:
        lines.append("to fit, try: " + "; or ".join(r["knobs"]))
    return lines
