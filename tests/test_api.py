"""`mmjax.load`: a run's model in Python gives the embeddings its evaluators use."""

import json

import jax
import numpy as np
import pytest

import mmjax
from mmjax import config as config_lib
from mmjax import eval as evaluators
from mmjax.api import Model
from mmjax.data import builders, sources
from mmjax.data.tokenizers import WordPieceTokenizer
from mmjax.train.setup import setup

SHRINK = ["--config.train.steps=4", "--config.train.log_every=2", "--config.train.eval_every=4",
          "--config.train.checkpoint_every=4", "--config.train.batch_size=32",
          "--config.eval.batch_size=250", "--config.model.embed_dim=16",
          "--config.model.image.depth=1", "--config.model.image.width=32",
          "--config.model.image.mlp_dim=64", "--config.model.image.num_heads=2",
          "--config.model.text.depth=1", "--config.model.text.width=32",
          "--config.model.text.mlp_dim=64", "--config.model.text.num_heads=2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A workdir with a step-0 checkpoint of a small smoke CLIP (as `mmjax import` writes it)."""
    from mmjax.export import write_workdir
    data_dir = str(tmp_path_factory.mktemp("data"))
    builders.prepare("digit_captions", data_dir)
    workdir = str(tmp_path_factory.mktemp("run") / "clip")
    config = config_lib.load("configs/smoke_clip.py", SHRINK)
    params = jax.device_get(setup(config, data_dir=data_dir).init_state().params)
    write_workdir(config, params, workdir, data_dir)
    return config, workdir, data_dir


def test_load_gives_the_embeddings_the_evaluator_used(trained):
    config, workdir, data_dir = trained
    model = mmjax.load(workdir, data_dir=data_dir, batch_size=48)   # 1000 = 20 x 48 + a padded 40
    run = setup(config, data_dir=data_dir, devices=jax.devices()[:1])
    zeroshot = evaluators.build(run, data_dir)["zeroshot"]
    params = jax.device_put(model.params)
    used = zeroshot.map_split(zeroshot._encode_images, params, zeroshot.batch_spec)
    digits = [r["image"] for r in sources.get("digit_captions").records(data_dir, "test")]
    ours = model.encode_image(digits)
    assert ours.shape == used["z"].shape == (1000, 16)
    np.testing.assert_allclose(ours, used["z"], atol=1e-5)
    prompts = ["a photo of the digit seven", "a handwritten two"]
    np.testing.assert_allclose(
        model.encode_text(prompts),
        zeroshot.map_rows(zeroshot._encode_text, params, model.tokenize(prompts)), atol=1e-5)
    # PIL images and encoded PNG bytes go through the same transform as arrays.
    from PIL import Image
    import io
    png = io.BytesIO()
    Image.fromarray(digits[0][..., 0]).save(png, format="PNG")
    np.testing.assert_allclose(model.encode_image([Image.fromarray(digits[0][..., 0]), png.getvalue()]),
                               np.repeat(ours[:1], 2, axis=0), atol=1e-5)


def test_load_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a workdir"):
        mmjax.load(str(tmp_path))


def test_fill_mask_ranks_the_mlm_head_probabilities():
    config = config_lib.load("configs/smoke_mlm.py")
    words = "to be or not that is the question whether tis nobler in mind".split()
    tokenizer = WordPieceTokenizer.train([" ".join(words)] * 20, vocab_size=200)
    config.model.text.vocab_size = tokenizer.vocab_size
    model_config = Model(config, None, tokenizer)
    method, args = model_config.task.init_args()
    params = model_config.module.init(jax.random.PRNGKey(0), *args, method=method)["params"]
    model = Model(config, params, tokenizer)
    predictions = model.fill_mask("to be or [MASK] to be", top_k=3)
    assert len(predictions) == 1 and len(predictions[0]) == 3
    tokens = model.tokenize(["to be or [MASK] to be"])
    slot = int(np.flatnonzero(tokens[0] == tokenizer.mask_id)[0])
    positions = np.zeros((1, config.model.mlm.max_predictions), np.int32)
    positions[0, 0] = slot
    logits = np.asarray(model.module.apply({"params": params}, tokens, positions,
                                           method="mlm_logits"), np.float64)[0, 0]
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    best = np.argsort(-probs)[:3]
    assert [p for _, p in predictions[0]] == pytest.approx(probs[best].tolist(), rel=1e-4)
    assert [t for t, _ in predictions[0]] == [tokenizer.decode([i]) or str(i) for i in best]
    with pytest.raises(ValueError, match="no mask token"):
        model.fill_mask("to be or not to be")


def test_cli_eval_runs_the_evaluators_named_on_the_command_line(trained, capsys):
    from mmjax.cli import main
    from mmjax.train.loop import evaluate_checkpoint
    config, workdir, data_dir = trained
    assert main(["eval", "--workdir", workdir, "--data_dir", data_dir,
                 "--evals", "zeroshot:digit_captions,retrieval:digit_captions:test"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    expected = evaluate_checkpoint(config, workdir, data_dir)   # the run's own entries
    assert got["eval/zeroshot_digit_captions/top1"] == expected["eval/zeroshot/top1"]
    assert got["eval/retrieval_digit_captions/t2i_r1"] == expected["eval/retrieval/t2i_r1"]
    assert main(["eval", "--workdir", workdir, "--data_dir", data_dir,
                 "--evals", "zeroshot:my_photos"]) == 2
    assert "mmjax data build SOURCE --name my_photos" in capsys.readouterr().err
    assert main(["eval", "--workdir", workdir, "--data_dir", data_dir, "--evals", "zeroshot"]) == 2
    assert "TYPE:DATASET" in capsys.readouterr().err
