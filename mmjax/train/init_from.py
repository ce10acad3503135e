"""Start a run from another run's parameters: a workdir, an `mmjax export --format params` dir
or a safetensors export (an `mmjax import`ed open_clip / BERT is a workdir).

`config.init`: `source` (the path; '' for none), `load` (patterns of the source's parameter
names to take, fnmatch: 'image/*' is the image tower), `rename` ((source prefix, this
model's prefix) pairs, e.g. (('text/', 'text/'),)). Layouts are converted (scan / unrolled,
fused / separate q,k,v); a name this model lacks or a shape that differs is refused with
the parameter names; an image tower from a source trained on another number of image
channels is refused naming `data.image_channels`. Everything not loaded keeps its fresh
initialisation.
"""

import os

import jax
import numpy as np

from mmjax import export, paths
from mmjax.convert import layout
from mmjax.errors import InitError
from mmjax.param_groups import matches


def read_source(source):
    """(config, canonical {name: numpy}) of the params at `source` (newest checkpoint of a workdir)."""
    if (paths.resolve(source) / "checkpoints").is_dir():
        config, _, params = export.read_checkpoint(source)
    elif (paths.resolve(source) / export.PARAMS_DIR).is_dir():
        config, params = export.load_params(source)
    elif source.endswith(".safetensors") and os.path.isfile(source):
        config, params = export.load_safetensors(source)
    else:
        raise FileNotFoundError(f"init.source={source!r} is neither a workdir (checkpoints/), an "
                                f"`mmjax export --format params` dir nor a .safetensors file")
    return config, layout.canonical(layout.flatten(params))


def _check_images(source, data, params):
    """InitError naming the fix when `params` hold a patch embedding for another number of image
    channels than this run's; a note (or '') when the source normalised images otherwise."""
    if not any(n.startswith("image/") for n in params):
        return ""
    if "image/patch_embed/kernel" in params and source.data.image_channels != data.image_channels:
        raise InitError(f"init.source's image tower takes {source.data.image_channels}-channel images, "
                        f"this model {data.image_channels}: pass --config.data.image_channels="
                        f"{source.data.image_channels} (gray images are then fed as "
                        f"{source.data.image_channels} equal channels)")
    theirs, ours = (tuple(source.data.mean), tuple(source.data.std)), (tuple(data.mean), tuple(data.std))
    if theirs == ours:
        return ""
    return (f"; note: the source normalised images with mean={theirs[0]}, std={theirs[1]}, this run "
            f"with mean={ours[0]}, std={ours[1]} (--config.data.mean / std set them)")


def select(flat, patterns, rename):
    """The entries whose names match `patterns`, with source prefixes renamed."""
    out = {}
    for name, x in flat.items():
        if not matches(name, patterns):
            continue
        for old, new in rename:
            if name.startswith(old):
                name = new + name[len(old):]
                break
        out[name] = x
    if not out:
        raise InitError(f"init.load={tuple(patterns)} matches none of the source's parameters "
                         f"(they start with: {', '.join(sorted({n.split('/')[0] for n in flat}))})")
    return out


def load_into(run, state):
    """(state with the source's params loaded, a line saying what was loaded)."""
    c = run.config.init
    source, flat = read_source(c.source)
    chosen = select(flat, tuple(c.load), tuple(tuple(r) for r in c.rename))
    params = layout.model_layout(chosen, run.config.model)
    note = _check_images(source, run.config.data, params)
    current = layout.flatten(state.params)
    unknown = sorted(set(params) - set(current))
    if unknown:
        raise InitError(f"init.source has parameters this model does not have: "
                         f"{', '.join(unknown[:8])}{' ...' if len(unknown) > 8 else ''}; "
                         f"narrow init.load or map names with init.rename")
    try:
        layout.check_shapes(params, {n: x.shape for n, x in current.items()})
    except ValueError as e:
        raise InitError(f"init.source={c.source!r}: {e}") from None
    merged = {n: (np.asarray(params[n], x.dtype) if n in params else x) for n, x in current.items()}
    new = jax.device_put(layout.unflatten(merged), run.state_shardings.params)
    return state.replace(params=new), f"{len(params)} of {len(current)} parameter arrays from {c.source}{note}"
