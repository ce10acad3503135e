"""The checksums saved with a checkpoint step: one per array, a digest per JSON item.

Orbax checks the structure of a step (TensorStore's OCDBT b-tree nodes carry a crc32c),
but array chunks above 1 KiB are stored as plain values in its data files: flipped bytes
there restore without a word. So a step also saves a checksum of every array, computed
where the data is (one jitted integer reduction over the global value: exact, so every
mesh, every process and the host agree on it), and whoever reads the step checks what it
read against them: a restore (mmjax/checkpoint.py), `mmjax verify`
(mmjax/checkpoint_verify.py) and an export (mmjax/export.py).
"""

import hashlib
import json

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from mmjax.errors import CheckpointError

CHECKSUMS_FORMAT = 1
_GOLDEN = 0x9E3779B9


def _fmix32(h):
    """MurmurHash3's finaliser: every input bit flips each output bit with probability 1/2."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _array_sum(x):
    """The sum (mod 2^32) over the elements of fmix32(bits + flat index x golden ratio).

    Exact integer arithmetic, so it is the same for any sharding, reduction order or device.
    Each element's term is a bijection of its bits, so a change to any one element always
    changes the sum; several changed elements cancel out with probability 2^-32."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        bits = x.astype(jnp.uint32)
    elif x.dtype.itemsize == 8:  # two 32-bit words per element: a trailing axis of 2
        bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    else:
        unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
        bits = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
    stride = 1
    for axis in reversed(range(bits.ndim)):
        bits = bits + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, axis) * jnp.uint32(
            stride * _GOLDEN % 2**32)
        stride *= bits.shape[axis]
    return jnp.sum(_fmix32(bits), dtype=jnp.uint32)


_tree_sums = jax.jit(lambda leaves: [_array_sum(x) for x in leaves])
_one_sum = jax.jit(_array_sum)


def _key_name(key):
    for field in ("name", "key", "idx"):  # GetAttrKey, DictKey / FlattenedIndexKey, SequenceKey
        if hasattr(key, field):
            return str(getattr(key, field))
    return str(key)


def array_name(path) -> str:
    """'params/text/token_embed/embedding': a leaf's key path as the checkpoint names it (the
    same for the TrainState and for the nested dicts orbax reads back)."""
    return "/".join(_key_name(k) for k in path)


def is_array(leaf):
    return hasattr(leaf, "shape") and hasattr(leaf, "dtype")


def array_checksums(tree) -> dict:
    """{array name: 8 hex digits} of every array in `tree`, computed where the arrays are
    (one jitted program; sharded arrays: every process calls it and gets the same answer)."""
    named = [(array_name(p), x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
             if is_array(x)]
    sums = jax.device_get(_tree_sums([x for _, x in named]))
    return {name: f"{int(total):08x}" for (name, _), total in zip(named, sums)}


def host_checksums(tree) -> dict:
    """`array_checksums` of a tree of numpy arrays, on this host's CPU."""
    with jax.default_device(jax.devices("cpu")[0]):
        return array_checksums(tree)


def host_checksum(array) -> str:
    """The checksum of one numpy array, on this host's CPU (what `array_checksums` gives)."""
    with jax.default_device(jax.devices("cpu")[0]):
        return f"{int(jax.device_get(_one_sum(array))):08x}"


def json_digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def make(state, items: dict) -> dict:
    """What a step saves as its "checksums" item: those of `state`'s arrays (computed on the
    devices: every process calls it) and a digest of each JSON item in `items`."""
    return {"format": CHECKSUMS_FORMAT, "arrays": array_checksums(state),
            "items": {name: json_digest(value) for name, value in items.items()}}


def saved(manager, directory, step):
    """The checksums saved with `step` (read through `manager`, whose items include
    "checksums"), or None for a step of an mmjax before them."""
    if not (directory / str(step) / "checksums").exists():
        return None
    value = manager.restore(step, args=ocp.args.Composite(
        checksums=ocp.args.JsonRestore()))["checksums"]
    if value.get("format") != CHECKSUMS_FORMAT:
        raise CheckpointError(f"checksums of an unknown format {value.get('format')!r}")
    return value


def mismatched(checksums, computed: dict) -> list:
    """The names in `computed` whose checksum differs from the one in `checksums` (saved;
    None: nothing to compare with), sorted. Names the saved ones lack are not compared."""
    if checksums is None:
        return []
    return sorted(name for name, value in computed.items()
                  if checksums["arrays"].get(name, value) != value)


def describe_mismatch(names) -> str:
    if len(names) == 1:
        return f"{names[0]} does not match the checksum saved with it"
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"{len(names)} arrays do not match the checksums saved with them: {shown}"


def check_arrays(checksums, tree):
    """A CheckpointError naming the arrays of `tree` that differ from `checksums`, or None.
    Every process calls it (with or without saved checksums: the sums are a collective) and
    gets the same verdict: the sums are of the global values."""
    bad = mismatched(checksums, array_checksums(tree))
    return CheckpointError(describe_mismatch(bad)) if bad else None


def item_matches(checksums, item, value) -> bool:
    digest = json_digest(value)
    return checksums is None or checksums["items"].get(item, digest) == digest


def check_item(checksums, item, value):
    if not item_matches(checksums, item, value):
        raise CheckpointError(f"the {item!r} item does not match the checksum saved with it")
