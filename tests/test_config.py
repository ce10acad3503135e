"""Configs and the CLI: overrides, clear errors for bad keys/values/files/batch sizes/data dirs."""

import pytest

from mmjax import cli
from mmjax import config as config_lib


def test_embedded_default_and_required_keys():
    c = config_lib.load()
    assert c.task == "clip"
    for key in ("seed", "train.steps", "train.batch_size", "train.log_every", "train.eval_every",
                "train.checkpoint_every", "mesh.data", "mesh.fsdp", "mesh.tensor"):
        assert config_lib._get(c, key) is not None, key


@pytest.mark.parametrize("name", ["smoke_clip.py", "smoke_mlm.py", "smoke_clip_mlm.py",
                                  "clip_webdataset.py", "clip_webdataset.py:cpu",
                                  "mlm_text_files.py", "mlm_text_files.py:cpu"])
def test_every_smoke_config_loads(name):
    assert config_lib.load(f"configs/{name}").train.steps > 0


def test_overrides_parse_with_the_old_type():
    c = config_lib.load(None, ["--config.train.batch_size=256", "--config.optim.lr=3e-4",
                               "--config.model.scan=False", "--config.task=mlm",
                               "--config.data.train=prose", "--config.model.init_logit_bias=-10.0",
                               "--config.optim.warmup_steps=7"])
    assert (c.train.batch_size, c.optim.lr, c.model.scan, c.task) == (256, 3e-4, False, "mlm")
    assert c.data.train == "prose" and c.model.init_logit_bias == -10.0
    assert isinstance(c.optim.lr, float)


@pytest.mark.parametrize("override,message", [
    ("--config.train.batchsize=3", "unknown config key 'train.batchsize'"),
    ("--config.trian.steps=3", "valid keys there:"),
    ("--config.train.batch_size=big", "expects an int"),
    ("--config.train.batch_size=1.5", "expects an int"),
    ("--config.model.scan=maybe", "expects True or False"),
    ("--config.task=vqa", "unknown task 'vqa'; valid: classify, clip, clip+caption, clip+itm, clip+itm+mlm, clip+mlm, lm, mlm, mlm+nsp, rtd, tag"),
    ("--config.optim.name=adam", "valid choices: adamw, sgd"),
    ("--config.data.train=digits:0", "positive weights"),
    ("--config.data.train=no_such_module:Data", "dataset 'no_such_module:Data' cannot be imported"),
    ("--config.data.crop=zoom", "valid choices: random_resized, resize, center"),
    ("--config.train=3", "is a group"),
    ("--config.train.steps", "has no value"),
    ("--config.train.steps=0", "must be positive"),
])
def test_bad_overrides_name_the_key_and_the_fix(override, message):
    with pytest.raises(config_lib.ConfigError, match=message.replace("(", r"\(").replace("+", r"\+")):
        config_lib.load(None, [override])


def test_unknown_key_lists_valid_keys():
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.load(None, ["--config.train.batchsize=3"])
    assert "batch_size" in str(e.value) and "checkpoint_every" in str(e.value)


def _run_cli(capsys, *argv):
    code = cli.main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


def test_cli_missing_config_file(capsys, tmp_path):
    code, err = _run_cli(capsys, "train", "--config", "configs/nope.py", "--workdir", str(tmp_path))
    assert code == 2 and err.startswith("mmjax: error:") and "configs/nope.py" in err
    assert len(err.splitlines()) == 1


def test_cli_bad_override(capsys, tmp_path):
    code, err = _run_cli(capsys, "train", "--workdir", str(tmp_path), "--config.train.batchsize=3")
    assert code == 2 and "train.batchsize" in err and len(err.splitlines()) == 1


def test_cli_batch_not_divisible_by_devices(capsys, tmp_path):
    # tests run with 8 simulated devices: 12 does not split over data=8
    code, err = _run_cli(capsys, "train", "--workdir", str(tmp_path), "--config.train.batch_size=12")
    assert code == 2 and "batch_size=12" in err and "multiple of 8" in err


def test_cli_mesh_that_does_not_match_the_devices(capsys, tmp_path):
    code, err = _run_cli(capsys, "train", "--workdir", str(tmp_path), "--config.mesh.data=3",
                         "--config.mesh.fsdp=2")
    assert code == 2 and "6 devices but 8 are available" in err


def test_cli_unwritable_data_dir(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, err = _run_cli(capsys, "train", "--workdir", str(tmp_path / "w"), "--data_dir", str(blocker / "sub"))
    assert code == 2 and str(blocker / "sub") in err and "--data_dir" in err


def test_cli_eval_without_a_run(capsys, tmp_path):
    code, err = _run_cli(capsys, "eval", "--workdir", str(tmp_path))
    assert code == 2 and "config.json not found" in err
