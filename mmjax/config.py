"""Experiment configs: load a `configs/*.py` file, apply `--config.KEY=VALUE` overrides, validate."""

import ast
import importlib.resources
import importlib.util
import json
import os

import ml_collections

from mmjax.errors import ConfigError, UnknownNameError
from mmjax.registry import DATASETS, EVALUATORS, TASKS

DEFAULT_CONFIG = "smoke_clip.py"

# Keys with a closed set of values; anything else is rejected with the list.
CHOICES = {
    "model.contrastive_loss": ("infonce", "sigmoid"),
    "model.remat": ("none", "full", "dots", "dots_no_batch"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.param_dtype": ("float32", "bfloat16"),
    "model.attention": ("auto", "einsum", "xla", "cudnn", "splash"),
    "optim.name": ("adamw", "sgd"),
    "optim.decay": ("cosine", "linear", "constant"),
    "data.tokenizer": ("clip_bpe", "wordpiece", "bpe"),
    "data.crop": ("random_resized", "resize", "center"),
    "data.image_channels": (1, 3),
    "model.image.pool": ("cls", "mean", "map"),
    "model.text.pool": ("eot", "first", "last", "mean"),
    "model.image.activation": ("gelu", "gelu_tanh", "quick_gelu", "relu"),
    "model.text.activation": ("gelu", "gelu_tanh", "quick_gelu", "relu"),
    "model.image.position": ("learned", "sinusoidal", "rotary"),
    "model.text.position": ("learned", "sinusoidal", "rotary"),
    "model.classify.tower": ("image", "text", "fusion"),
    "model.fusion.kind": ("cross", "concat"),
    "model.fusion.layout": ("blip", "albef"),
    "train.early_stop.mode": ("max", "min"),
}

# The declared range of every numeric option, checked by validate(): an interval ('[' / ']'
# include the bound, '(' / ')' exclude it), after 'int' for whole numbers; 'None or' also
# allows None, '-1 or' also allows -1 (fill with the rest). A tuple value is checked entry by
# entry; '*' matches any name (the entries of `evals`).
RANGES = {
    "seed": "int [0, inf)",
    "model.embed_dim": "int [1, inf)",
    "model.init_logit_bias": "None or (-inf, inf)",
    "model.splash_min_length": "int [0, inf)",         # 0: 'auto' never picks splash
    **{f"model.{tower}.{key}": "int [1, inf)" for tower in ("image", "text")
       for key in ("width", "depth", "num_heads", "mlp_dim")},
    "model.image.patch_size": "int [1, inf)",
    "model.image.norm_eps": "(0, inf)",
    "model.text.vocab_size": "int [1, inf)",
    "model.text.context_length": "int [2, inf)",      # room for the start and end tokens
    "model.text.type_vocab_size": "int [0, inf)",
    "model.text.pad_id": "int [0, inf)",
    "model.text.norm_eps": "(0, inf)",
    "model.image.rope_base": "(1, inf)",
    "model.text.rope_base": "(1, inf)",
    "model.mlm.max_predictions": "int [1, inf)",
    "model.mlm.mask_rate": "(0, 1]",
    "model.mlm.weight": "[0, inf)",
    **{f"model.rtd.generator_{key}": "int [0, inf)" for key in ("width", "depth", "heads", "mlp_dim")},
    "model.rtd.disc_weight": "[0, inf)",
    "model.itm.weight": "[0, inf)",
    "model.itm.negatives": "int [1, inf)",
    "model.fusion.depth": "int [0, inf)",             # 0: model.text.depth
    "model.caption.weight": "[0, inf)",
    "model.lm.z_loss": "[0, inf)",
    "model.lm.chunk": "int [0, inf)",
    "model.classify.num_classes": "int [2, inf)",
    "model.classify.text_length": "int [0, inf)",     # 0: model.text.context_length
    "model.tag.num_tags": "int [2, inf)",
    "model.tag.text_length": "int [0, inf)",          # 0: model.text.context_length
    "data.image_size": "int [1, inf)",
    "data.crop_scale": "(0, 1]",
    "data.crop_ratio": "(0, inf)",
    "data.mean": "[0, 1]",
    "data.std": "(0, inf)",
    "data.pack_window": "int [1, inf)",
    "data.worker_count": "int [0, inf)",
    "data.max_bad_fraction": "[0, 1]",
    "train.steps": "int [1, inf)",
    "train.batch_size": "int [1, inf)",
    "train.log_every": "int [1, inf)",
    "train.eval_every": "int [0, inf)",               # 0: after the last step only
    "train.checkpoint_every": "int [1, inf)",
    "train.grad_accum_steps": "int [1, inf)",
    "train.early_stop.patience": "int [0, inf)",      # 0: off
    "train.peak_flops_per_chip": "[0, inf)",          # 0: data sheet / CPU calibration
    "train.profile.start_step": "int [0, inf)",
    "train.profile.steps": "int [0, inf)",            # 0: no trace
    "optim.lr": "(0, inf)",
    "optim.warmup_steps": "int [0, inf)",
    "optim.end_lr_ratio": "[0, 1]",
    "optim.weight_decay": "[0, inf)",
    "optim.b1": "[0, 1)",
    "optim.b2": "[0, 1)",
    "optim.eps": "(0, inf)",
    "optim.clip_norm": "[0, inf)",                    # 0: no clipping
    "optim.max_skipped_steps": "int [0, inf)",
    "optim.layer_decay": "(0, 1]",
    "optim.head_lr_mult": "(0, inf)",
    "optim.trainable_top_layers": "int [0, inf)",     # 0: every layer
    "optim.unfreeze_every": "int [0, inf)",           # 0: off
    "eval.batch_size": "int [1, inf)",
    "eval.seed": "int [0, inf)",
    "evals.*.batch_size": "int [1, inf)",
    "evals.*.every": "int [0, inf)",
    "evals.*.seed": "int [0, inf)",
    "evals.*.min_examples": "int [0, inf)",           # fewer scored: a warning
    "checkpoint.keep": "int [0, inf)",                # 0: keep every step
    "checkpoint.keep_period": "int [0, inf)",
    **{f"mesh.{axis}": "-1 or int [1, inf)" for axis in ("data", "fsdp", "tensor")},
    **{f"mesh.dcn_{axis}": "int [1, inf)" for axis in ("data", "fsdp", "tensor")},
}
# Options that hold a (low, high) pair.
PAIRS = ("data.crop_scale", "data.crop_ratio")
# (key, relation, other key): each key's value must stand in that relation to the other's.
RELATIONS = (
    ("train.grad_accum_steps", "divides", "train.batch_size"),
    ("model.image.num_heads", "divides", "model.image.width"),
    ("model.text.num_heads", "divides", "model.text.width"),
    ("model.classify.text_length", "<=", "model.text.context_length"),
    ("model.tag.text_length", "<=", "model.text.context_length"),
)
# Keys a config file may set in a group although defaults() has no value for them.
OPTIONAL_KEYS = {"model.text": ("pad_id",)}
# Groups whose entries are named by the user (not checked against defaults()).
OPEN_GROUPS = ("evals",)


def default_config_path() -> str:
    return str(importlib.resources.files("mmjax.configs") / DEFAULT_CONFIG)


def load(path: str | None = None, overrides: list[str] = ()) -> ml_collections.ConfigDict:
    """Loads `path` (or the embedded smoke CLIP config), applies overrides, validates, locks."""
    path = path or default_config_path()
    path, _, arg = path.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} not found; pass --config with a path such as "
                          f"configs/smoke_clip.py")
    spec = importlib.util.spec_from_file_location(f"mmjax_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} defines no get_config(); a config file returns its "
                          f"ConfigDict from get_config()")
    config = module.get_config(arg) if arg else module.get_config()
    config.lock()
    for override in overrides:
        apply_override(config, override)
    validate(config)
    return config


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
    """Applies one `KEY=VALUE` (dotted key, value parsed as a Python literal of the old type)."""
    key, sep, text = override.partition("=")
    key = key.removeprefix("--").removeprefix("config.")
    if not sep:
        raise ConfigError(f"override {override!r} has no value; write --config.{key}=VALUE")
    *parents, leaf = key.split(".")
    node = config
    for depth, name in enumerate(parents + [leaf]):
        if name not in node:
            where = ".".join(parents[:depth]) or "the top level"
            raise ConfigError(f"unknown config key {key!r}: {where} has no {name!r}; "
                              f"valid keys there: {', '.join(sorted(node.keys()))}")
        if depth < len(parents):
            node = node[name]
            if not isinstance(node, ml_collections.ConfigDict):
                raise ConfigError(f"config key {'.'.join(parents[:depth + 1])!r} is a value, "
                                  f"not a group; cannot set {key!r}")
    old = node[leaf]
    node[leaf] = _parse(key, text, old)


_EXPECTED = {bool: "True or False", int: "an int", float: "a float", tuple: "a tuple", list: "a tuple"}


def _parse(key: str, text: str, old):
    """Parses `text` as a Python literal of the same type as the current value `old`."""
    if isinstance(old, ml_collections.ConfigDict):
        raise ConfigError(f"config key {key!r} is a group; override one of its keys: "
                          f"{', '.join(sorted(old.keys()))}")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text  # a bare word: a string
    if old is None or isinstance(old, str):
        return value if old is None else text
    if isinstance(old, bool) and isinstance(value, str) and value.lower() in ("true", "false"):
        value = value.lower() == "true"
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          tuple: lambda v: isinstance(v, (tuple, list)),
          list: lambda v: isinstance(v, (tuple, list))}[type(old)](value)
    if not ok:
        raise ConfigError(f"config key {key!r} expects {_EXPECTED[type(old)]}, got {text!r}")
    return float(value) if isinstance(old, float) else tuple(value) if isinstance(old, (tuple, list)) else value


def _get(config, dotted):
    node = config
    for name in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or name not in node:
            return None
        node = node[name]
    return node


def parse_mixture(text: str) -> list[tuple[str, float]]:
    """`data.train`, 'NAME' or 'NAME:0.7,OTHER:0.3' -> [(name, weight)] (weights normalised)."""
    parts = []
    for item in (t.strip() for t in str(text).split(",") if t.strip()):
        name, colon, weight = (t.strip() for t in item.rpartition(":"))
        if colon and not weight:
            raise ConfigError(f"data.train={text!r}: {item!r} has an empty weight; write "
                              f"'{name}:0.3' (a positive number) or '{name}' (weight 1)")
        try:
            parts.append((name, float(weight)))
        except ValueError:  # no weight (or 'module:Class'): weight 1
            parts.append((item, 1.0))
    for name, weight in parts:
        if not name:
            raise ConfigError(f"data.train={text!r}: an entry with weight {weight} names no "
                              f"dataset; write a mixture as 'NAME:0.7,OTHER:0.3'")
        if not 0 < weight < float("inf"):
            raise ConfigError(f"data.train={text!r}: dataset {name!r} has weight {weight}; name "
                              f"a dataset, or a mixture 'NAME:0.7,OTHER:0.3' with positive weights")
    if not parts:
        raise ConfigError(f"data.train={text!r}: name a dataset, or a mixture "
                          f"'NAME:0.7,OTHER:0.3' with positive weights")
    total = sum(w for _, w in parts)
    return [(n, w / total) for n, w in parts]


def _values(config, pattern):
    """(dotted key, value) of each key `pattern` matches ('*': any name at that level)."""
    nodes = [("", config)]
    for name in pattern.split("."):
        nodes = [(f"{key}{k}.", child) for key, node in nodes
                 if isinstance(node, (ml_collections.ConfigDict, dict))
                 for k, child in node.items() if name in ("*", k)]
    return [(key[:-1], value) for key, value in nodes]


_WORDS = {"(0, inf)": "positive", "[1, inf)": "positive", "[0, inf)": "non-negative"}


def _range_error(value, spec):
    """Why `value` is outside the declared range `spec` (see RANGES), or None if it is in it."""
    rest, allow = spec, set()
    for word in ("None or ", "-1 or ", "int "):
        if rest.startswith(word):
            allow.add(word.split()[0])
            rest = rest.removeprefix(word)
    if value is None and "None" in allow or value == -1 and "-1" in allow:
        return None
    if value is None or isinstance(value, (bool, str)) or not isinstance(value, (int, float)):
        return "must be a number"
    if "int" in allow and not isinstance(value, int):
        return "must be an int"
    low, high = (float(b) for b in rest[1:-1].split(","))
    above = low <= value if rest[0] == "[" else low < value
    below = value <= high if rest[-1] == "]" else value < high
    also = " or ".join(sorted(allow - {"int"}, reverse=True))
    return None if above and below else (f"must be {also + ' or ' if also else ''}"
                                         f"{_WORDS.get(rest, 'in ' + rest)}")


def _check_ranges(config):
    for pattern, spec in RANGES.items():
        for key, value in _values(config, pattern):
            entries = value if isinstance(value, (tuple, list)) else (value,)
            errors = [e for e in (_range_error(v, spec) for v in entries) if e]
            if errors:
                each = " (each entry)" if isinstance(value, (tuple, list)) else ""
                raise ConfigError(f"config key {key!r} {errors[0]}{each}, got {value!r}; "
                                  f"valid: {spec}")
    for key in PAIRS:
        pair = _get(config, key)
        if pair is not None and (len(pair) != 2 or pair[0] > pair[1]):
            raise ConfigError(f"config key {key!r} is {pair!r}; valid: a pair (low, high) "
                              f"with low <= high, each in {RANGES[key]}")


def _divisors(n, most=8):
    found = [d for d in range(1, n + 1) if n % d == 0]
    return ", ".join(map(str, found if len(found) <= most else found[:most - 1] + ["...", n]))


def _check_relations(config):
    for key, relation, other in RELATIONS:
        value, bound = _get(config, key), _get(config, other)
        if value is None or bound is None:
            continue
        if relation == "divides" and bound % value:
            raise ConfigError(f"config key {key!r} is {value}, which does not divide "
                              f"{other}={bound}; valid: a divisor of {bound} ({_divisors(bound)})")
        if relation == "<=" and value > bound:
            raise ConfigError(f"config key {key!r} is {value}, more than {other}={bound}; "
                              f"valid: {RANGES[key].removesuffix('inf)')}{bound}]")


def _check_known_keys(config, reference, prefix=""):
    """Every key of `config` is one defaults() has (or OPTIONAL_KEYS names): a misspelt key
    in a config file would otherwise be set and never read."""
    group = prefix.removesuffix(".")
    for name in config.keys():
        key = prefix + name
        if name not in reference:
            if name in OPTIONAL_KEYS.get(group, ()):
                continue
            valid = sorted(set(reference.keys()) | set(OPTIONAL_KEYS.get(group, ())))
            raise ConfigError(f"unknown config key {key!r}: {group or 'the top level'} has no "
                              f"{name!r}; valid keys there: {', '.join(valid)}")
        if (key not in OPEN_GROUPS and isinstance(config[name], ml_collections.ConfigDict)
                and isinstance(reference[name], ml_collections.ConfigDict)):
            _check_known_keys(config[name], reference[name], key + ".")


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks the keys every tool relies on, that every key is a known one, the closed
    choices, the declared range of every numeric option (RANGES, PAIRS, RELATIONS) and the
    plug-in names. Each failure is one ConfigError naming the key, the value and what is valid."""
    for key in ("seed", "task", "train.steps", "train.batch_size", "train.log_every",
                "train.eval_every", "train.checkpoint_every", "mesh.data", "mesh.fsdp",
                "mesh.tensor"):
        if _get(config, key) is None:
            raise ConfigError(f"config is missing required key {key!r}")
    _check_known_keys(config, defaults())
    for key, valid in CHOICES.items():
        value = _get(config, key)
        if value is not None and (value not in valid or isinstance(value, bool)):
            raise ConfigError(f"config key {key!r} is {value!r}; valid choices: "
                              f"{', '.join(map(str, valid))}")
    _check_ranges(config)
    _check_relations(config)
    # Plug-ins by name: the registries list the valid ones (without importing the built-ins).
    lookups = [("task", TASKS, config.task)]
    # Dataset names may also be folders in the data dir: unregistered ones are checked at
    # setup, where the data dir is known; 'module:Class' ones here.
    mixture = [n for n, _ in parse_mixture(config.data.train)] if _get(config, "data.train") else []
    lookups += [("data.train", DATASETS, n) for n in mixture if n in DATASETS.names() or ":" in n]
    for name, entry in (_get(config, "evals") or {}).items():
        if "type" not in entry:
            raise ConfigError(f"config key 'evals.{name}' has no type; valid: "
                              f"{', '.join(EVALUATORS.names())}")
        lookups.append((f"evals.{name}.type", EVALUATORS, entry["type"]))
        if ":" in entry.get("dataset", ""):
            lookups.append((f"evals.{name}.dataset", DATASETS, entry["dataset"]))
    for key, registry, name in lookups:
        try:
            registry.check(name)
        except UnknownNameError as e:
            raise ConfigError(f"config key {key!r}: {e}") from None


def from_dict(d: dict) -> ml_collections.ConfigDict:
    """ConfigDict of a config read back from JSON (lists become the tuples configs hold).
    A run saved before `data.train` existed named its one dataset in `data.datasets`."""
    data = d.get("data", {})
    if "datasets" in data and "train" not in data:
        d = {**d, "data": {**{k: v for k, v in data.items() if k != "datasets"},
                           "train": ",".join(data["datasets"])}}

    def tuples(x):
        if isinstance(x, dict):
            return {k: tuples(v) for k, v in x.items()}
        return tuple(tuples(v) for v in x) if isinstance(x, list) else x
    return ml_collections.ConfigDict(tuples(d))


def from_json(path: str) -> ml_collections.ConfigDict:
    """The config a run saved as config.json."""
    from mmjax import paths  # Lazy: etils
    return from_dict(json.loads(paths.resolve(path).read_text()))


def defaults() -> ml_collections.ConfigDict:
    """Every key a training config has, with neutral defaults; config files change what differs."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.task = "clip"    # a name in mmjax.tasks.TASKS ('clip', 'mlm', 'clip+mlm') or 'module:Class'

    c.model = dict(
        dtype="float32", param_dtype="float32",   # compute dtype / storage dtype
        scan=True, remat="none", attention="auto", fused_qkv=True,
        # The last layer only at the positions the loss reads (class / EOT token, masked
        # slots): the same outputs, fewer FLOPs; False computes every position (mmjax/flops.py).
        prune_last_layer=True,
        # 'auto' attention on TPU runs the splash kernel (nn/splash.py: no [l, l] scores) for
        # sequences of at least this many tokens that are a multiple of 128; 0: never.
        splash_min_length=2048,
        embed_dim=512, contrastive_loss="infonce", init_logit_bias=None,
        # False: the image tower's pooled features are the embedding (SigLIP's; needs embed_dim
        # = model.image.width), else a learned projection to embed_dim (CLIP's).
        image_proj=True,
        image=dict(patch_size=16, width=768, depth=12, num_heads=12, mlp_dim=3072, pool="cls",
                   ln_pre=True, patch_bias=False, pre_norm=True, activation="gelu", norm_eps=1e-5),
        text=dict(vocab_size=49408, context_length=77, width=512, depth=12, num_heads=8,
                  mlp_dim=2048, causal=True, pool="eot", pre_norm=True, embed_norm=False,
                  final_norm=True, type_vocab_size=0, activation="gelu", norm_eps=1e-5),
        # MLM: how many positions per sequence are predicted (fixed, for static shapes), the
        # masking rate, and the weight of the MLM term in 'clip+mlm'.
        mlm=dict(max_predictions=20, mask_rate=0.15, weight=1.0),
        # The 'rtd' task (ELECTRA): the generator's size (0: derived from model.text, see
        # nn/electra.py generator_sizes: a quarter of its width) and λ in generator MLM +
        # λ · discriminator BCE (ELECTRA's 50).
        rtd=dict(generator_width=0, generator_depth=0, generator_heads=0, generator_mlp_dim=0,
                 disc_weight=50.0),
        # The 'lm' task: output head tied to the token table (GPT-2) or its own; z_loss: the
        # coefficient of PaLM's log(Z)² term (0: off); chunk: the loss runs the head on this
        # many positions at a time, never holding [batch, length, vocab] logits (0: at once).
        lm=dict(tie_embeddings=True, z_loss=0.0, chunk=0),
        # The 'classify' task: which tower's pooled features feed the linear head ('fusion': the
        # fused first token of an (image, text) pair, through model.fusion's encoder).
        classify=dict(tower="image", num_classes=10, text_length=0),
        # The 'tag' task: tags of a `--kind conll` dataset (its tag set's size), text cut to
        # text_length word pieces (0: model.text.context_length).
        tag=dict(num_tags=9, text_length=0),
        # Fusion encoder of 'clip+itm' tasks (tasks/itm.py ENCODERS): 'cross' in BLIP's layout
        # (every text block cross-attends to the image tokens in the fused pass, nn/fusion.py)
        # or ALBEF's (`depth` such blocks on top of the text tower, nn/fusion_albef.py);
        # 'concat': one stack of `depth` blocks over [image tokens; text] (nn/fusion_concat.py,
        # layout unused). depth 0: model.text.depth.
        fusion=dict(kind="cross", layout="blip", depth=0),
        # ITM term's weight; labels: the batch carries 'label' and a same-label candidate is
        # never a hard negative (besides the same caption); negatives: hard negatives drawn per
        # image and per text, each weighing 1/negatives.
        itm=dict(weight=1.0, labels=False, negatives=1),
        # 'clip+caption': the caption term's weight; the vocabulary head tied to the token table.
        caption=dict(weight=1.0, tie_embeddings=True),
    )
    # Positions per tower (mmjax/nn/positions.py): 'learned' (a trained table), 'sinusoidal'
    # (fixed; 2-D for image patches) or 'rotary' (queries and keys; 2-D axial for images),
    # whose base (rope_base, RoFormer's 10000) sets the rotation frequencies.
    c.model.image.update(position="learned", rope_base=10000.0)
    c.model.text.update(position="learned", rope_base=10000.0)
    # train: what is trained on: a dataset name (mmjax.data.sources.DATASETS, or a tfds
    # folder in the data dir that `mmjax data build` made) or a weighted mixture
    # 'NAME:0.7,OTHER:0.3'. tokenizer_data: the datasets whose train text trains the
    # WordPiece vocabulary or the byte-level BPE ('bpe', GPT-2's scheme) (default: train's).
    # vocab_file: a BERT vocab.txt for 'wordpiece'.
    # Images: decoded, cropped (train: crop 'random_resized' with crop_scale / crop_ratio,
    # 'resize' or 'center'; eval: resize + centre crop) to image_size x image_channels,
    # normalised with mean / std (CLIP's). pack: MLM / LM rows packed from whole documents;
    # pack_mask: attention stays inside each packed document (task 'lm'); pack_window: rows
    # packed together from their own documents (mmjax/data/packing.py; a divisor of the
    # rows per process keeps each process's tokenising to its own share).
    # worker_count: grain worker processes per host. max_bad_fraction: records that fail
    # to decode are skipped and counted (data/skipped); more than this fraction stops.
    c.data = dict(train="digit_captions", tokenizer="clip_bpe", tokenizer_data=(),
                  vocab_file="", image_size=28, image_channels=1, crop="random_resized",
                  crop_scale=(0.9, 1.0), crop_ratio=(0.75, 4 / 3),
                  mean=(0.48145466, 0.4578275, 0.40821073),
                  std=(0.26862954, 0.26130258, 0.27577711),
                  pack=False, pack_mask=False, pack_window=8, worker_count=0, max_bad_fraction=0.01)
    c.train = dict(steps=1000, batch_size=256, log_every=50, eval_every=500,
                   checkpoint_every=500,
                   # Gradient accumulation: the contrastive loss still sees all
                   # batch_size examples as negatives (gradient caching, see train/step.py).
                   grad_accum_steps=1,
                   # Stop when `metric` (an evaluator's key) has not improved for `patience`
                   # evaluations; the best params are kept in WORKDIR/best (train/early_stop.py).
                   early_stop=dict(metric="", mode="max", patience=0),
                   # train/mfu's denominator, one chip's bf16 dense peak FLOP/s; 0: the data
                   # sheet of the device kind, or on CPU one calibration stored per CPU
                   # (mmjax/train/mfu.py). A device kind it does not know gets no MFU.
                   peak_flops_per_chip=0.0,
                   # A JAX profiler trace of steps [start_step, start_step + steps) under
                   # WORKDIR/tensorboard, on process 0 or all (train/profile.py); steps 0: off.
                   profile=dict(start_step=0, steps=0, all_processes=False))
    # skip_nonfinite: an update with NaN/inf gradients is skipped and counted; more than
    # max_skipped_steps in a row stop the run (its checkpoints hold finite parameters).
    c.optim = dict(name="adamw", lr=1e-3, warmup_steps=100, decay="cosine", end_lr_ratio=0.0,
                   weight_decay=0.1, b1=0.9, b2=0.98, eps=1e-6, clip_norm=1.0,
                   skip_nonfinite=True, max_skipped_steps=10,
                   # Which params train and how fast (mmjax/param_groups.py): path patterns
                   # ('image/*') that stay frozen, layer-wise decay (rate x decay**(depth -
                   # layer)), a rate factor for `head` patterns, only the top k layers of
                   # each tower, one more layer every `unfreeze_every` steps (0: off).
                   frozen=(), layer_decay=1.0, head=(), head_lr_mult=1.0,
                   trainable_top_layers=0, unfreeze_every=0)
    # Evaluators: {name: dict(type=..., dataset=..., split=..., every=..., batch_size=...)}
    # (types in mmjax.eval.EVALUATORS); empty: the task's defaults. `eval` holds the
    # defaults of every entry (every: train.eval_every).
    c.evals = {}
    c.eval = dict(split="test", batch_size=500, seed=0)
    c.checkpoint = dict(keep=3, keep_period=0)
    # Start from another run's parameters (mmjax/train/init_from.py): a workdir, a params
    # export or a .safetensors file; `load` patterns pick what is taken, `rename` maps
    # ((source prefix, this model's prefix), ...).
    c.init = dict(source="", load=("*",), rename=())
    # Mesh sizes: one may be -1 (fill with the remaining devices). dcn_*: across TPU slices.
    c.mesh = dict(data=-1, fsdp=1, tensor=1, dcn_data=1, dcn_fsdp=1, dcn_tensor=1)
    # Overrides of the logical-axis rules in mmjax/sharding.py, e.g. (("vocab", None),).
    c.sharding = dict(rules=())
    return c
