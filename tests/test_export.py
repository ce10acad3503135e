"""Exports of a run: params-only orbax and safetensors round trips, the transformers BERT export
of an mmjax-trained smoke MLM (loaded by transformers, same logits), `mmjax import` making a run
that evaluates the same, layouts (scan / fused q,k,v) and the errors of what does not map."""

import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from mmjax import cli
from mmjax import config as config_lib
from mmjax import export
from mmjax.convert import layout, torch_io
from mmjax.data.tokenizers import get_tokenizer
from mmjax import tasks
from conftest import run_mmjax
from splits import prose_texts

TOL = 1e-4


def _init(config, seed=0):
    task = tasks.get(config, tokenizer=None)
    method, args = task.init_args()
    model = task.build_model()
    init = jax.jit(lambda rng: nn.unbox(model.init(rng, *args, method=method)["params"]))
    return model, jax.tree.map(np.asarray, init(jax.random.PRNGKey(seed)))


def _mlm_logits(config, params, tokens):
    positions = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
    return np.asarray(jax.jit(tasks.get(config, None).build_model().apply)({"params": params}, tokens, positions))


def test_layouts_convert_both_ways_without_changing_the_model():
    small = ["--config.model.text.depth=3", "--config.model.text.vocab_size=300",
             "--config.model.text.width=32", "--config.model.text.mlp_dim=64"]
    scanned = config_lib.load("configs/smoke_mlm.py", small + ["--config.model.scan=True",
                                                               "--config.model.fused_qkv=False"])
    unrolled = config_lib.load("configs/smoke_mlm.py", small)
    _, params = _init(scanned)
    flat = layout.flatten(params)
    assert "text/encoder/layers/attn/q_kernel" in flat
    canonical = layout.canonical(flat)
    assert canonical["text/encoder/layers_2/attn/qkv_kernel"].shape == (32, 3, 4, 8)
    back = layout.model_layout(canonical, scanned.model)
    assert sorted(back) == sorted(flat) and all(np.array_equal(back[n], flat[n]) for n in flat)
    other, fresh = export.fit(unrolled, canonical)
    assert fresh == []
    tokens = np.random.default_rng(0).integers(5, 300, (2, 64))
    tokens[1, 40:] = 0
    a, b = _mlm_logits(scanned, params, tokens), _mlm_logits(unrolled, other, tokens)
    assert np.abs(a - b).max() < 1e-5


@pytest.fixture(scope="module")
def trained_mlm(tmp_path_factory):
    """The smoke MLM config trained a few steps by `mmjax train`: (workdir, data_dir, its final metrics)."""
    data_dir, workdir = tmp_path_factory.mktemp("data"), tmp_path_factory.mktemp("run")
    results = run_mmjax("train", "--config", "configs/smoke_mlm.py", "--workdir", str(workdir),
                        "--data_dir", str(data_dir), "--config.train.steps=2", "--config.train.batch_size=16",
                        "--config.train.log_every=2", "--config.optim.warmup_steps=1")
    return str(workdir), str(data_dir), results


def test_trained_smoke_mlm_export_loads_in_transformers_and_matches(trained_mlm, tmp_path):
    torch = torch_io.import_torch()
    from transformers import BertForMaskedLM
    workdir, data_dir, _ = trained_mlm
    out = str(tmp_path / "bert")
    assert export.export(workdir, "hf_bert", out)["step"] == 2
    reference, info = BertForMaskedLM.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched tensors
    config, _, params = export.read_checkpoint(workdir)
    texts = prose_texts(data_dir, "test")[:4] + ["short"]
    tokens = get_tokenizer("wordpiece", data_dir).encode(texts, config.model.text.context_length)
    assert (tokens == 0).any()  # some padding, which both sides mask
    with torch.no_grad():
        theirs = reference.eval()(input_ids=torch.from_numpy(tokens).long(),
                                  attention_mask=torch.from_numpy(tokens != 0).long()).logits.numpy()
    ours = _mlm_logits(config, params, tokens)
    assert ours.shape == theirs.shape == (5, 64, 8192)
    assert np.abs(ours - theirs).max() < TOL, np.abs(ours - theirs).max()


def test_params_and_safetensors_exports_round_trip(trained_mlm, tmp_path):
    workdir, _, _ = trained_mlm
    config, step, params = export.read_checkpoint(workdir)
    flat = layout.flatten(params)
    export.export(workdir, "params", str(tmp_path / "p32"))
    loaded_config, loaded = export.load_params(str(tmp_path / "p32"))
    assert loaded_config.to_dict() == config.to_dict()
    assert all(np.array_equal(layout.flatten(loaded)[n], flat[n]) for n in flat)
    export.export(workdir, "params", str(tmp_path / "p16"), dtype="bfloat16")
    _, half = export.load_params(str(tmp_path / "p16"))
    half = layout.flatten(half)
    assert {str(x.dtype) for x in half.values()} == {"bfloat16"}
    assert all(np.allclose(half[n].astype(np.float32), flat[n], rtol=1e-2, atol=1e-6) for n in flat)
    # mmjax import casts them back to the config's float32 parameters.
    _, params16, _ = export.load("params", str(tmp_path / "p16"))
    assert layout.flatten(params16)["text/token_embed/embedding"].dtype == np.float32
    path = str(tmp_path / "model.safetensors")
    export.export(workdir, "safetensors", path)
    st_config, st_params = export.load_safetensors(path)
    assert st_config.to_dict() == config.to_dict()
    st = layout.flatten(st_params)
    assert sorted(st) == sorted(flat) and all(np.array_equal(st[n], flat[n]) for n in flat)


def test_cli_import_makes_a_run_that_evaluates_the_same(trained_mlm, tmp_path, capsys):
    workdir, data_dir, results = trained_mlm
    out, new = str(tmp_path / "bert"), str(tmp_path / "imported")
    assert cli.main(["export", "--workdir", workdir, "--format", "hf_bert", "--out", out]) == 0
    assert cli.main(["import", "--format", "hf_bert", "--src", out, "--workdir", new,
                     "--config", "configs/smoke_mlm.py", "--data_dir", data_dir]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["initialised_fresh"] == [] and summary["task"] == "mlm"
    _, step, imported = export.read_checkpoint(new)
    _, _, trained = export.read_checkpoint(workdir)
    assert step == 0
    assert all(np.array_equal(x, layout.flatten(trained)[n]) for n, x in layout.flatten(imported).items())
    assert config_lib.load(os.path.join(new, "config.py")).model.to_dict() == \
        config_lib.load("configs/smoke_mlm.py").model.to_dict()
    metrics = run_mmjax("eval", "--workdir", new, "--data_dir", data_dir)
    assert metrics["step"] == 0
    assert metrics["eval/mlm/accuracy"] == pytest.approx(results["eval/mlm/accuracy"], abs=1e-6)
    # A second import into the same run is refused rather than mixed into it.
    assert cli.main(["import", "--format", "hf_bert", "--src", out, "--workdir", new,
                     "--data_dir", data_dir]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err


def test_what_has_no_counterpart_is_named():
    mlm = config_lib.load("configs/smoke_mlm.py")
    with pytest.raises(ValueError, match=r"task \(needs 'clip' or 'clip\+mlm'\).*model.text.causal"):
        export.to_reference("open_clip", mlm, {})  # the config alone decides
    clip = config_lib.load(None, ["--config.model.image.pool=mean"])
    with pytest.raises(ValueError, match=r"model.image.pool \(needs 'cls'\)"):
        export.to_reference("open_clip", clip, {})
    # open_clip pools text at argmax(ids): with WordPiece that is not the end token ([SEP]).
    wordpiece = config_lib.load(None, ["--config.data.tokenizer=wordpiece"])
    with pytest.raises(ValueError, match=r"data.tokenizer \(needs 'clip_bpe'\)"):
        export.to_reference("open_clip", wordpiece, {})
    params = {n: np.zeros(s.shape, s.dtype) for n, s in export.abstract_params(mlm).items()}
    hf_config, tensors = export.to_reference("hf_bert", mlm, layout.unflatten(params))
    with pytest.raises(ValueError, match="with no mmjax counterpart: bert.encoder.layer.0.extra"):
        export.from_reference("hf_bert", hf_config, {**tensors, "bert.encoder.layer.0.extra": np.zeros(3)}, mlm)
    del tensors["bert.encoder.layer.1.output.dense.weight"]
    with pytest.raises(ValueError, match="lack tensors for: text/encoder/layers_1/mlp/fc2/kernel"):
        export.from_reference("hf_bert", hf_config, tensors, mlm)
    with pytest.raises(ValueError, match="mmjax does not build: position_embedding_type='relative_key'"):
        export.from_reference("hf_bert", {**hf_config, "position_embedding_type": "relative_key"}, tensors, mlm)


def test_cli_export_errors_are_clear(tmp_path, capsys):
    out = str(tmp_path / "o")
    assert cli.main(["export", "--workdir", str(tmp_path), "--format", "params", "--out", out]) == 2
    assert "--workdir must be a directory that `mmjax train` wrote" in capsys.readouterr().err
