"""Export a run's parameters (params-only orbax, safetensors, open_clip, transformers BERT / GPT-2 /
ELECTRA) and import such weights as a new run's step-0 checkpoint, ready for `mmjax eval` and `mmjax train`."""

import json
import logging
import os
import pprint
import textwrap

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from mmjax import checksums as checksum_lib
from mmjax import config as config_lib
from mmjax import paths
from mmjax import tasks
from mmjax.checkpoint import ITEMS
from mmjax.convert import FORMATS, hf_bert, hf_blip, hf_clip, hf_electra, hf_gpt2, hf_siglip, layout, open_clip
from mmjax.data import vocab as vocab_lib
from mmjax.errors import CheckpointError

log = logging.getLogger(__name__)

FAMILIES = {"open_clip": open_clip, "hf_bert": hf_bert, "hf_gpt2": hf_gpt2, "hf_clip": hf_clip,
            "hf_siglip": hf_siglip, "hf_electra": hf_electra, "hf_blip": hf_blip}
CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
CONFIG_PY = '''"""Model imported by `mmjax import --format {fmt} --src {src}`.

  mmjax train --config {workdir}/config.py --workdir {workdir}   # fine-tune / continue
  mmjax eval --workdir {workdir}
"""

import ml_collections


def get_config():
    return ml_collections.ConfigDict(
{body})
'''


def abstract_params(config):
    """{flat name: ShapeDtypeStruct} of the params `config`'s model has (allocates nothing)."""
    task = tasks.get(config, tokenizer=None)
    model = task.build_model()
    method, args = task.init_args()
    tree = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args, method=method))["params"]
    return layout.flatten(nn.unbox(tree))


def read_checkpoint(workdir, step=None):
    """(config, step, params as numpy) of WORKDIR's checkpoint `step` (default: the newest),
    with the config that checkpoint was written with. The config and the params are checked
    against the checksums saved with the step (one saved before checksums is only read): a
    mismatch is a CheckpointError naming the arrays."""
    directory = paths.resolve(workdir) / "checkpoints"
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} not found: --workdir must be a directory that `mmjax train` wrote")
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True),
                                    item_names=ITEMS)
    try:
        steps = sorted(manager.all_steps())
        if step is None and steps:
            step = steps[-1]
        if step not in steps:
            raise FileNotFoundError(f"no checkpoint step {step} under {directory}; steps there: {steps}")
        checksums = checksum_lib.saved(manager, directory, step)
        saved = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
        if not checksum_lib.item_matches(checksums, "config", saved):
            raise _corrupt(workdir, directory, step, "the 'config' item does not match the "
                                                     "checksum saved with it")
        config = config_lib.from_dict(saved)
        target = {"params": layout.unflatten(abstract_params(config))}  # host numpy: no shardings
        state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True)))["state"]
    finally:
        manager.close()
    params = jax.tree.map(np.asarray, state["params"])
    bad = checksum_lib.mismatched(checksums, checksum_lib.host_checksums({"params": params})
                                  if checksums is not None else {})
    if bad:
        raise _corrupt(workdir, directory, step, checksum_lib.describe_mismatch(bad))
    return config, step, params


def _corrupt(workdir, directory, step, what):
    return CheckpointError(f"checkpoint step {step} under {directory} is corrupt: {what}. "
                           f"`mmjax verify --workdir {workdir}` checks every step; take an "
                           f"intact older one with --step N")


def save_params(out, config, params):
    """OUT/config.json + OUT/params (an orbax checkpoint of the params tree)."""
    paths.write_text(paths.join(out, CONFIG_FILE), config.to_json(indent=2))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(paths.resolve(out) / PARAMS_DIR, params)
    checkpointer.wait_until_finished()


def load_params(src):
    """(config, params as numpy, in the dtype they were saved with) of a `params` export."""
    config = config_lib.from_dict(json.loads((paths.resolve(src) / CONFIG_FILE).read_text()))
    path = paths.resolve(src) / PARAMS_DIR
    checkpointer = ocp.StandardCheckpointer()
    saved = checkpointer.metadata(path).item_metadata.tree
    # ShapeDtypeStructs without shardings restore as numpy arrays on the host.
    params = checkpointer.restore(path, jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), saved))
    return config, jax.tree.map(np.asarray, params)


def save_safetensors(path, config, params, vocab=""):
    """One safetensors file: flat names ('text/encoder/layers_0/ln1/scale') -> tensors; the
    config rides along in the metadata (key 'mmjax_config'), and so does a WordPiece
    vocabulary's vocab.txt text (key 'mmjax_vocab')."""
    from safetensors.numpy import save_file
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    metadata = {"mmjax_config": config.to_json(), **({"mmjax_vocab": vocab} if vocab else {})}
    save_file(layout.contiguous(layout.flatten(params)), path, metadata=metadata)


def load_safetensors(path):
    from safetensors import safe_open
    from safetensors.numpy import load_file
    with safe_open(path, "np") as f:
        metadata = f.metadata() or {}
    if "mmjax_config" not in metadata:
        raise ValueError(f"{path} has no 'mmjax_config' metadata: not an `mmjax export --format safetensors` file")
    return config_lib.from_dict(json.loads(metadata["mmjax_config"])), layout.unflatten(load_file(path))


# The towers each reference family holds: with learned position tables only.
LEARNED_POSITIONS_ONLY = {"open_clip": ("image", "text"), "hf_bert": ("text",), "hf_gpt2": ("text",),
                          "hf_clip": ("image", "text"), "hf_siglip": ("image", "text"),
                          "hf_electra": ("text",), "hf_blip": ("image", "text")}


def check_positions(family, config):
    """A ValueError (one line) when `family` cannot hold the model's position encoding."""
    for tower in LEARNED_POSITIONS_ONLY[family]:
        position = config.model[tower].get("position", "learned")
        if position != "learned":
            raise ValueError(f"--format {family} holds learned position tables only, but "
                             f"model.{tower}.position is {position!r}; export with --format "
                             f"params or safetensors, or train with model.{tower}.position='learned'")


def check_fusion(fmt, config, params):
    """A ValueError (one line) when `params` hold a fusion stack of their own (ALBEF's layout,
    the single stream: 'fusion'), which no reference format has a place for."""
    if fmt not in ("params", "safetensors") and "fusion" in params:
        f = config.model.fusion
        raise ValueError(f"--format {fmt} has no place for the fusion encoder of model.fusion "
                         f"kind={f.kind!r} layout={f.layout!r}; export with --format params or "
                         f"safetensors (hf_blip holds kind 'cross' in layout 'blip' only)")


def to_reference(family, config, params):
    """(reference config dict, {reference name: numpy array}) of mmjax `params`."""
    fam = FAMILIES[family]
    check_positions(family, config)
    ref_config = fam.reference_config(config)
    flat = {n: x for n, x in layout.canonical(layout.flatten(params)).items()
            if not n.startswith(fam.SKIP_ON_EXPORT)}
    flat = getattr(fam, "before_export", dict)(flat)   # e.g. hf_clip folds a patch bias in
    return ref_config, layout.to_reference(fam.rules(config), flat)


def fit(config, flat):
    """(params tree in `config`'s layout and dtype, names left to initialise) of canonical `flat`."""
    expected = abstract_params(config)
    params = layout.model_layout(flat, config.model)
    unknown = sorted(set(params) - set(expected))
    if unknown:
        raise ValueError(f"parameters the model does not have: {', '.join(unknown)}")
    layout.check_shapes(params, {n: s.shape for n, s in expected.items()})
    params = {n: np.asarray(x, expected[n].dtype) for n, x in params.items()}
    return layout.unflatten(params), sorted(set(expected) - set(params))


def from_reference(family, ref_config, tensors, base):
    """(config, params, names left to initialise) from a reference model's config and tensors;
    `base` gives everything but the model (training, data, layout settings)."""
    config = FAMILIES[family].mmjax_config(ref_config, base)
    return (config, *_reference_params(family, config, tensors))


def _say_what_the_weights_set(config, base, base_config, fmt, src):
    """One warning line naming the data settings `base_config` sets (to other than the defaults)
    that the weights set otherwise (image size, channels, mean / std): the weights' are used."""
    defaults = config_lib.defaults().data
    changed = [f"data.{k}={config.data[k]!r} (not {base.data[k]!r})" for k in config.data
               if config.data[k] != base.data[k] and base.data[k] != defaults.get(k)]
    if changed:
        log.warning("the %s weights at %s set %s over what %s says; a --config.KEY=VALUE flag "
                    "chooses otherwise", fmt, src, ", ".join(changed), base_config)


def _value(config, dotted):
    for name in dotted.split("."):
        config = config.get(name) if hasattr(config, "get") else None
    return config


def _reference_params(family, config, tensors):
    """(params, names left to initialise) of a reference model's tensors under `config`."""
    fam = FAMILIES[family]
    flat, missing = layout.from_reference(fam.rules(config), fam.prepare(tensors), fam.IGNORED)
    required = [n for n in missing if not n.startswith(fam.OPTIONAL)]
    if required:
        raise ValueError(f"the {family} weights lack tensors for: {', '.join(required)}")
    return fit(config, flat)


def export(workdir, fmt, out, step=None, dtype=None):
    """Writes WORKDIR's checkpoint `step` (default: newest) as `fmt` to `out`; returns a summary."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    if dtype and fmt not in ("params", "safetensors"):
        raise ValueError(f"--dtype applies to the params and safetensors formats, not {fmt!r}")
    config, step, params = read_checkpoint(workdir, step)
    check_fusion(fmt, config, params)
    if dtype:
        params = jax.tree.map(lambda x: x.astype(dtype) if np.issubdtype(x.dtype, np.floating) else x, params)
    tokenizer = vocab_lib.read_vocab(workdir)   # the run's learned vocabulary, if it has one
    if fmt in ("hf_bert", "hf_electra", "hf_clip", "hf_siglip", "hf_blip") and config.data.tokenizer == "bpe":
        raise ValueError(f"{fmt} carries CLIP's BPE or a WordPiece vocabulary; this run's "
                         "data.tokenizer is 'bpe': export it as safetensors or params")
    if fmt == "params":
        save_params(out, config, params)
    elif fmt == "safetensors":
        save_safetensors(out, config, params, tokenizer.vocab_text() if tokenizer else "")
    else:
        FAMILIES[fmt].save(out, *to_reference(fmt, config, params), config)
    if tokenizer and fmt in ("hf_bert", "hf_gpt2", "hf_electra"):   # AutoTokenizer reads what they write
        FAMILIES[fmt].save_tokenizer(out, tokenizer, config.model.text.context_length)
    if fmt in ("hf_clip", "hf_siglip", "hf_blip"):   # the processor's tokenizer: the run's WordPiece, or CLIP's BPE (None)
        FAMILIES[fmt].save_tokenizer(out, tokenizer, config)
    if tokenizer and fmt != "safetensors":
        tokenizer.save_vocab(paths.join(out, tokenizer.vocab_file))
    return {"format": fmt, "step": step, "out": out, "vocab": tokenizer is not None,
            "parameters": int(sum(np.size(x) for x in jax.tree.leaves(params)))}


def transformers_format(src):
    """The --format of a transformers directory mmjax reads whole (its config.json's model_type
    names it: 'clip' -> hf_clip), None for any other."""
    path = paths.resolve(src) / CONFIG_FILE
    model_type = json.loads(path.read_text()).get("model_type") if path.is_file() else None
    return {"clip": "hf_clip"}.get(model_type)


def carried_vocab(fmt, src, kind="wordpiece"):
    """The vocabulary text (vocab.txt, or bpe.json for kind 'bpe') an export carries ('' if
    none): a directory's file, a safetensors file's 'mmjax_vocab' metadata."""
    if fmt == "safetensors":
        from safetensors import safe_open
        with safe_open(src, "np") as f:
            return (f.metadata() or {}).get("mmjax_vocab", "")
    path = paths.resolve(vocab_lib.vocab_path(src, kind))
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def load(fmt, src, base_config=None, overrides=()):
    """(config, params, names left to initialise) of weights in any export format.

    params / safetensors carry their own config (`overrides` apply to it); open_clip / hf_bert
    take the model (and open_clip its image mean / std) from the reference and the rest from
    `base_config` (a config file; default the smoke config of that task). An override that
    sets a key the reference sets otherwise wins, with a warning line naming both values."""
    if fmt in ("params", "safetensors"):
        config, params = load_params(src) if fmt == "params" else load_safetensors(src)
        for override in overrides:
            config_lib.apply_override(config, override)
        config_lib.validate(config)
        params, fresh = fit(config, layout.canonical(layout.flatten(params)))
        return config, params, fresh
    if fmt not in FAMILIES:
        raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    fam = FAMILIES[fmt]
    base = config_lib.load(base_config or os.path.join(os.path.dirname(config_lib.default_config_path()),
                                                        fam.DEFAULT_BASE), overrides)
    ref_config, tensors = fam.load(src)
    config = fam.mmjax_config(ref_config, base)
    replaced = _explicit_overrides_win(config, overrides, fmt, src)
    if base_config:
        _say_what_the_weights_set(config, base, base_config, fmt, src)
    try:
        params, fresh = _reference_params(fmt, config, tensors)
    except ValueError as e:
        if not replaced:
            raise
        raise ValueError(f"{e}; drop {', '.join('--config.' + k for k in replaced)}: the {fmt} "
                         f"weights set {'it' if len(replaced) == 1 else 'them'}") from None
    config_lib.validate(config)
    return config, params, fresh


def _explicit_overrides_win(config, overrides, fmt, src):
    """Re-applies the command-line `overrides` over what the reference set; a value that
    differs from the reference's is a warning line naming both. Returns those keys."""
    replaced = []
    for override in overrides:
        key = override.partition("=")[0].removeprefix("--").removeprefix("config.")
        before = _value(config, key)
        config_lib.apply_override(config, override)
        after = _value(config, key)
        if after != before:
            replaced.append(key)
            log.warning("%s=%r from the command line replaces the %r of the %s weights at %s: the "
                        "import will not reproduce the source", key, after, before,
                        fmt, src)
    return replaced


def write_workdir(config, params, workdir, data_dir, note=("", ""), vocab=""):
    """A new run in `workdir`: a step-0 checkpoint (the params, fresh optimizer state, the data
    position of a new run), config.json and config.py, and vocab.txt: `vocab` (the imported
    model's), else the config's (see data/vocab.py). Params absent from `params` are
    initialised as `mmjax train` would."""
    from mmjax.checkpoint import Checkpointer
    from mmjax.data import pipeline
    from mmjax.train.setup import setup
    from mmjax.train.state import TrainState

    directory = paths.resolve(workdir) / "checkpoints"
    if directory.is_dir() and any(directory.iterdir()):
        raise FileExistsError(f"{directory} already holds checkpoints; import into a new --workdir")
    if vocab and jax.process_index() == 0:
        paths.write_text(vocab_lib.vocab_path(workdir, vocab_lib.kind_of(vocab)), vocab)
    if vocab and jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("mmjax_import_vocab")
    run = setup(config, data_dir=data_dir, workdir=workdir, check_batch=False)
    shardings = run.state_shardings
    given = layout.flatten(params)
    if set(layout.flatten(run.abstract_state.params)) - set(given):  # some to initialise: as train would
        state = run.init_state()
        given = {n: given.get(n, x) for n, x in layout.flatten(state.params).items()}
    new_params = jax.device_put(layout.unflatten(given), shardings.params)
    rng = jax.random.split(jax.random.PRNGKey(config.seed))[1]  # train/state.py's (params, train) split
    state = jax.device_put(TrainState(np.zeros((), np.int32), new_params, run.tx.init(new_params), rng),
                           shardings)
    data_state = pipeline.train_batches(run, data_dir, jax.process_index(),
                                        jax.process_count()).get_state()
    checkpointer = Checkpointer(directory, config)
    checkpointer.save(0, state, data_state)
    checkpointer.wait()
    checkpointer.close()
    if jax.process_index() == 0:
        paths.write_text(paths.join(workdir, CONFIG_FILE), config.to_json(indent=2))
        body = textwrap.indent(pprint.pformat(config.to_dict(), width=92, sort_dicts=False), " " * 8)
        paths.write_text(paths.join(workdir, "config.py"),
                         CONFIG_PY.format(fmt=note[0], src=note[1], workdir=workdir, body=body))


def import_weights(fmt, src, workdir, data_dir, base_config=None, overrides=()):
    """`mmjax import`: weights in format `fmt` at `src` -> a new run in `workdir`; a summary."""
    config, params, fresh = load(fmt, src, base_config, overrides)
    learned = config.data.tokenizer in vocab_lib.LEARNED
    vocab = carried_vocab(fmt, src, config.data.tokenizer) if learned else ""
    write_workdir(config, params, workdir, data_dir, note=(fmt, src), vocab=vocab)
    return {"format": fmt, "src": src, "workdir": workdir, "task": config.task,
            "parameters": int(sum(np.size(x) for x in jax.tree.leaves(params))),
            "initialised_fresh": fresh}
