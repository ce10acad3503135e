"""Device mesh from config, the logical-axis rules table, multi-host start-up, global batches."""

import math
import os

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from mmjax.errors import MeshError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over both

# Logical name -> mesh axis (or None = replicated). The one place that decides sharding;
# `config.sharding.rules` may override entries. Params: the 'embed' dim is split by FSDP,
# 'mlp'/'heads'/'vocab' by tensor parallelism. Activations name their own dims so an
# activation's embed dim is never split like the params' (which would force all-gathers).
RULES = (
    ("batch", BATCH_AXES),
    ("length", None),
    ("image_length", None),   # the image tokens a fusion encoder attends to
    ("activation_embed", None),
    ("activation_mlp", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("patch", None),
    ("layers", None),
)


def mesh_shape(mesh_config, num_devices):
    """Resolves the data/fsdp/tensor sizes (one may be -1 = fill) for `num_devices` devices."""
    dcn = tuple(mesh_config.get(f"dcn_{a}", 1) for a in MESH_AXES)
    ici_devices, rem = divmod(num_devices, math.prod(dcn))
    if rem:
        raise MeshError(f"DCN mesh {dict(zip(MESH_AXES, dcn))} (product {math.prod(dcn)}) does not "
                        f"divide the {num_devices} devices")
    sizes = [mesh_config[a] for a in MESH_AXES]
    fill = [i for i, s in enumerate(sizes) if s == -1]
    if len(fill) > 1:
        raise MeshError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
    if fill:
        known = math.prod(s for s in sizes if s != -1)
        if ici_devices % known:
            raise MeshError(f"mesh {dict(zip(MESH_AXES, sizes))}: {known} does not divide "
                            f"{ici_devices} devices per slice")
        sizes[fill[0]] = ici_devices // known
    if math.prod(sizes) != ici_devices:
        raise MeshError(f"mesh {dict(zip(MESH_AXES, sizes))} has {math.prod(sizes) * math.prod(dcn)} "
                        f"devices but {num_devices} are available; set the sizes so their product is "
                        f"{num_devices}, or set one of them to -1")
    return tuple(sizes), dcn


def make_mesh(mesh_config, devices=None) -> Mesh:
    """A Mesh over ('data', 'fsdp', 'tensor') with Auto axis types (GSPMD propagation).

    Multi-slice TPU: `dcn_data` etc. give the across-slice sizes; within-slice sizes come from
    the ICI entries, laid out by the topology-aware `create_hybrid_device_mesh`.
    """
    devices = jax.devices() if devices is None else devices
    ici, dcn = mesh_shape(mesh_config, len(devices))
    grid = _device_grid(devices, ici, dcn)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _device_grid(devices, ici, dcn):
    """Devices laid out as the mesh, topology-aware: whole physical axes first, then (for
    shapes the torus does not factor into, e.g. fsdp=16 x data=8 on a 4x4x8 v5p) split
    physical axes; a plain reshape only for one slice of devices without a topology (CPU)."""
    multislice = math.prod(dcn) > 1
    for split in (False, True):
        try:
            if multislice:
                return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices,
                                                            allow_split_physical_axes=split)
            return mesh_utils.create_device_mesh(ici, devices, allow_split_physical_axes=split)
        except (AssertionError, NotImplementedError, ValueError):
            if split and multislice:
                raise
    return np.asarray(devices).reshape(ici)


def rules(sharding_config=None):
    """The rules table with `config.sharding.rules` entries ((name, axis), ...) taking precedence."""
    overrides = tuple((name, None if axes is None else (tuple(axes) if isinstance(axes, (list, tuple)) else axes))
                      for name, axes in (sharding_config.get("rules", ()) if sharding_config else ()))
    names = {name for name, _ in overrides}
    return overrides + tuple(r for r in RULES if r[0] not in names)


def logical_shardings(boxed_tree, mesh, rule_table):
    """NamedShardings for a tree whose leaves carry logical names (`nn.LogicallyPartitioned`).

    Empty optax `MaskedNode`s (the optimizer state of frozen params) stay as they are."""
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed_tree), mesh, rule_table)

    def masked(box):
        return isinstance(nn.unbox(box), optax.MaskedNode)

    return jax.tree.map(lambda b, s: optax.MaskedNode() if masked(b) else s, boxed_tree, shardings,
                        is_leaf=lambda x: isinstance(x, (nn.Partitioned, optax.MaskedNode)))


def batch_sharding(mesh) -> NamedSharding:
    """Leading (batch) dimension split over data x fsdp; the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def global_batch(local_batch, mesh):
    """Each process's slice of the batch (numpy) -> global jax.Arrays sharded on the batch axes."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                        local_batch)


def check_batch_size(batch_size, mesh):
    """The global batch must split evenly over the batch axes and the processes (the hosts of
    the mesh's devices: this process's job, or a TPU topology compiled for ahead of time)."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    processes = len({d.process_index for d in mesh.devices.flat})
    if batch_size % shards or batch_size % processes:
        raise MeshError(f"train.batch_size={batch_size} is not divisible by data x fsdp = {shards} "
                        f"(and {processes} processes); use a multiple of "
                        f"{math.lcm(shards, processes)}")


def initialize_distributed(coordinator=None, num_processes=None, process_id=None):
    """Joins the processes of a multi-host job.

    TPU VMs and SLURM are detected by JAX itself; elsewhere give the coordinator address,
    process count and id (arguments, or MMJAX_COORDINATOR / MMJAX_NUM_PROCESSES /
    MMJAX_PROCESS_ID). Does nothing for a single process started without any of them.
    """
    coordinator = coordinator or os.environ.get("MMJAX_COORDINATOR")
    num_processes = num_processes or os.environ.get("MMJAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else os.environ.get("MMJAX_PROCESS_ID")
    if coordinator:
        jax.distributed.initialize(coordinator, int(num_processes), int(process_id))
    elif "SLURM_JOB_ID" in os.environ or "TPU_WORKER_HOSTNAMES" in os.environ or "CLOUD_TPU_TASK_ID" in os.environ:
        jax.distributed.initialize()


def replicate(x, mesh):
    """A host numpy array (identical on every process) -> a global array replicated on the mesh."""
    return jax.make_array_from_process_local_data(NamedSharding(mesh, P()), np.asarray(x))
