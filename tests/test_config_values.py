"""Config values that would train nonsense are refused: every numeric option has a declared
range (config.RANGES), closed choices, divisibility, misspelt keys in config files, mixture
weights. Each is one ConfigError naming the key, the value and what is valid."""

import glob
import os
import subprocess
import sys
import textwrap

import ml_collections
import pytest

from mmjax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("override,key,valid", [
    ("optim.lr=-1e-3", "'optim.lr'", "(0, inf)"),
    ("optim.lr=0.0", "'optim.lr'", "(0, inf)"),
    ("optim.weight_decay=-0.1", "'optim.weight_decay'", "[0, inf)"),
    ("optim.b1=1.0", "'optim.b1'", "[0, 1)"),
    ("optim.b2=-0.5", "'optim.b2'", "[0, 1)"),
    ("optim.eps=0.0", "'optim.eps'", "(0, inf)"),
    ("optim.end_lr_ratio=1.5", "'optim.end_lr_ratio'", "[0, 1]"),
    ("optim.warmup_steps=-5", "'optim.warmup_steps'", "int [0, inf)"),
    ("optim.clip_norm=-1.0", "'optim.clip_norm'", "[0, inf)"),
    ("optim.layer_decay=0.0", "'optim.layer_decay'", "(0, 1]"),
    ("optim.head_lr_mult=-2.0", "'optim.head_lr_mult'", "(0, inf)"),
    ("optim.max_skipped_steps=-1", "'optim.max_skipped_steps'", "int [0, inf)"),
    ("model.mlm.mask_rate=1.5", "'model.mlm.mask_rate'", "(0, 1]"),
    ("model.mlm.mask_rate=0.0", "'model.mlm.mask_rate'", "(0, 1]"),
    ("model.text.context_length=1", "'model.text.context_length'", "int [2, inf)"),
    ("model.text.norm_eps=0.0", "'model.text.norm_eps'", "(0, inf)"),
    ("model.image.depth=0", "'model.image.depth'", "int [1, inf)"),
    ("model.embed_dim=-8", "'model.embed_dim'", "int [1, inf)"),
    ("model.init_logit_bias=1e999", "'model.init_logit_bias'", "None or (-inf, inf)"),
    ("model.classify.num_classes=1", "'model.classify.num_classes'", "int [2, inf)"),
    ("model.classify.text_length=99", "'model.classify.text_length'", "int [0, 16]"),
    ("model.text.num_heads=5", "'model.text.num_heads'", "a divisor of 96"),
    ("data.max_bad_fraction=2.0", "'data.max_bad_fraction'", "[0, 1]"),
    ("data.worker_count=-1", "'data.worker_count'", "int [0, inf)"),
    ("data.image_size=0", "'data.image_size'", "int [1, inf)"),
    ("data.std=(0.2,0.0,0.3)", "'data.std'", "(0, inf)"),
    ("data.crop_scale=(0.9,0.5)", "'data.crop_scale'", "low <= high"),
    ("data.crop_ratio=(0.75,)", "'data.crop_ratio'", "a pair"),
    ("data.image_channels=2", "'data.image_channels'", "1, 3"),
    ("train.grad_accum_steps=0", "'train.grad_accum_steps'", "int [1, inf)"),
    ("train.grad_accum_steps=3", "'train.grad_accum_steps'", "a divisor of 128"),
    ("train.checkpoint_every=0", "'train.checkpoint_every'", "int [1, inf)"),
    ("train.eval_every=-1", "'train.eval_every'", "int [0, inf)"),
    ("train.early_stop.patience=-3", "'train.early_stop.patience'", "int [0, inf)"),
    ("train.early_stop.mode=maximum", "'train.early_stop.mode'", "max, min"),
    ("eval.batch_size=0", "'eval.batch_size'", "int [1, inf)"),
    ("checkpoint.keep=-1", "'checkpoint.keep'", "int [0, inf)"),
    ("mesh.fsdp=0", "'mesh.fsdp'", "-1 or int [1, inf)"),
    ("mesh.dcn_data=0", "'mesh.dcn_data'", "int [1, inf)"),
    ("seed=-1", "'seed'", "int [0, inf)"),
    ("model.classify.tower=audio", "'model.classify.tower'", "image, text"),
    ("model.text.pool=max", "'model.text.pool'", "eot, first, last, mean"),
    ("model.image.activation=swish", "'model.image.activation'", "quick_gelu"),
    ("data.train=a:0.7,b:", "'b:' has an empty weight", "'b:0.3'"),
    ("data.train=a:0.7,b:-1", "dataset 'b' has weight -1.0", "positive weights"),
    ("data.train=a:0.7,:0.3", "names no dataset", "'NAME:0.7,OTHER:0.3'"),
])
def test_a_bad_value_is_one_error_naming_key_value_and_range(override, key, valid):
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.load(None, [f"--config.{override}"])
    message = str(e.value)
    assert key in message and valid in message and "\n" not in message, message


def test_an_evals_entry_is_checked_too():
    config = config_lib.load()
    config.unlock()
    config.evals = dict(zeroshot=dict(type="zeroshot", dataset="digit_captions", batch_size=0))
    with pytest.raises(config_lib.ConfigError, match=r"'evals\.zeroshot\.batch_size' must be positive"):
        config_lib.validate(config)


def test_every_numeric_option_has_a_declared_range():
    """A numeric option added to defaults() without a range fails here (its key is printed)."""
    def numeric(node, prefix=""):
        for name, value in node.items():
            if isinstance(value, ml_collections.ConfigDict):
                yield from numeric(value, f"{prefix}{name}.")
            elif name == "init_logit_bias" or (
                    not isinstance(value, (bool, str)) and isinstance(value, (int, float, tuple))
                    and value != () and all(isinstance(v, (int, float)) for v in
                                            (value if isinstance(value, tuple) else (value,)))):
                yield prefix + name
    declared = set(config_lib.RANGES) | set(config_lib.CHOICES)   # data.image_channels: 1 or 3
    missing = [k for k in numeric(config_lib.defaults()) if k not in declared]
    assert not missing
    # ... and every declared key is one a config has (defaults() or OPTIONAL_KEYS).
    optional = {f"{g}.{k}" for g, keys in config_lib.OPTIONAL_KEYS.items() for k in keys}
    stale = [k for k in config_lib.RANGES if "*" not in k and k not in optional
             and config_lib._get(config_lib.defaults(), k) is None and k != "model.init_logit_bias"]
    assert not stale


def test_the_declared_choices_match_the_model_code():
    from mmjax.nn import options
    from mmjax.nn.transformer import ACTIVATIONS
    for tower in ("image", "text"):
        assert set(config_lib.CHOICES[f"model.{tower}.activation"]) == set(ACTIVATIONS)
        # The keys a config may set in a tower are the options it takes.
        cls = {"image": options.ViTOptions, "text": options.TextOptions}[tower]
        fields = {f.name for f in cls.__dataclass_fields__.values()}
        settable = (set(config_lib.defaults().model[tower])
                    | set(config_lib.OPTIONAL_KEYS.get(f"model.{tower}", ())))
        # The ViT is never causal: a config that sets model.image.causal is refused.
        ignored = {"causal"} if tower == "image" else set()
        assert settable == fields - set(options.COMPUTE_KEYS) - set(options.TOKENIZER_KEYS[tower]) - ignored


def test_a_misspelt_key_in_a_config_file_is_refused(tmp_path):
    path = tmp_path / "typo.py"
    path.write_text(textwrap.dedent("""
        from mmjax.config import defaults

        def get_config():
            c = defaults()
            c.model.text.update(poool="mean")
            return c
    """))
    with pytest.raises(config_lib.ConfigError, match=r"unknown config key 'model\.text\.poool'.*pool"):
        config_lib.load(str(path))


def _shipped():
    variants = {"clip_webdataset.py": ("tpu", "cpu"), "mlm_text_files.py": ("tpu", "cpu"),
                "finetune_minilm_genres.py": ("probe", "finetune"),
                "compare_objectives.py": ("pretrain=mlm", "pretrain=rtd", "pretrain=nsp",
                                          "genres=runs/cmp_mlm,scale=0.5", "genres=scratch")}
    for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))):
        name = os.path.basename(path)
        if name != "__init__.py":
            yield from ([f"{name}:{v}" for v in variants[name]] if name in variants else [name])


def test_every_shipped_config_validates():
    names = list(_shipped())
    assert len(names) >= 20
    for name in names:
        config_lib.load(os.path.join(ROOT, "configs", name))


def test_the_objective_comparison_spends_one_flops_budget():
    """MLM, RTD and MLM+NSP: steps x each task's per-step FLOPs equal (to one step's worth)."""
    from mmjax import tasks
    for scale in (1.0, 0.5):
        spent = {}
        for objective in ("mlm", "rtd", "nsp"):
            c = config_lib.load(os.path.join(ROOT, "configs",
                                             f"compare_objectives.py:pretrain={objective},scale={scale}"))
            per_step = tasks.get(c, None).train_flops()
            spent[objective] = (c.train.steps * per_step, per_step)
        budget = spent["mlm"][0]
        assert budget == 2000 * scale * spent["mlm"][1]
        for total, per_step in spent.values():
            assert abs(total - budget) <= per_step / 2, spent


def test_the_cli_refuses_a_negative_learning_rate_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mmjax.cli", "train", "--workdir", str(tmp_path),
                           "--config.optim.lr=-1e-3"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mmjax: error:"), done.stderr
    assert "'optim.lr'" in lines[0] and "-0.001" in lines[0] and "(0, inf)" in lines[0]
    assert not os.listdir(tmp_path)   # nothing was started
