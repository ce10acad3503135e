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


def _numpy_recall(zimg, ztxt, image_of_text, ks):
    """Recall@K from a full similarity matrix (captions here are all different)."""
    sims = zimg @ ztxt.T
    relevant = np.arange(len(zimg))[:, None] == np.asarray(image_of_text)[None, :]   # [images, texts]
    i2t, t2i = np.argsort(-sims, axis=1)[:, :max(ks)], np.argsort(-sims.T, axis=1)[:, :max(ks)]
    out = {}
    for k in ks:
        out[f"i2t_r{k}"] = np.mean([relevant[i, i2t[i, :k]].any() for i in range(len(zimg))])
        out[f"t2i_r{k}"] = np.mean([relevant[t2i[t, :k], t].any() for t in range(len(ztxt))])
    return out


def test_retrieval_over_records_of_an_image_and_its_captions(trained, tmp_path):
    """A Karpathy-style build (one record per image, 1-3 captions each) scores what numpy
    computes from the API's embeddings of the same images and captions."""
    from PIL import Image
    from mmjax.data import build
    config, workdir, data_dir = trained
    digits = [r for _, r in zip(range(24), sources.get("digit_captions").records(data_dir, "test"))]
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    entries, captions_of = [], []
    for i, record in enumerate(digits):
        Image.fromarray(record["image"][..., 0]).save(tmp_path / f"{i}.png")
        captions = [f"digit {names[record['label']]} number {i} view {j}" for j in range(1 + i % 3)]
        captions_of.append(captions)
        entries.append({"filename": f"{i}.png", "split": "test", "imgid": i,
                        "sentences": [{"raw": c} for c in captions]})
    (tmp_path / "dataset_tiny.json").write_text(json.dumps({"dataset": "tiny", "images": entries}))
    build.build(str(tmp_path / "dataset_tiny.json"), "tiny_karpathy", data_dir, kind="karpathy",
                images=str(tmp_path), workers=1)
    run = setup(config, data_dir=data_dir, devices=jax.devices()[:1])
    spec = dict(type="retrieval", dataset="tiny_karpathy", split="test", every=1, batch_size=10,
                seed=0, ks=(1, 5))
    model = mmjax.load(workdir, data_dir=data_dir)
    got = evaluators.EVALUATORS.get("retrieval")(run, spec, data_dir).run(jax.device_put(model.params))
    texts = [c for captions in captions_of for c in captions]
    image_of_text = [i for i, captions in enumerate(captions_of) for _ in captions]
    expected = _numpy_recall(model.encode_image([r["image"] for r in digits]), model.encode_text(texts),
                             image_of_text, ks=(1, 5))
    assert got.keys() == expected.keys() | {"n", "n_test"} and got["n"] == 24
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-9), key


def test_zero_shot_with_stored_class_names_and_the_80_templates(trained, tmp_path):
    """Class names from the build's mmjax_build.json (not the ClassLabel names), the CLIP
    paper's 80 templates, lower-cased prompts: the same top-1 as numpy on the API's embeddings."""
    from PIL import Image
    from mmjax.data import build
    from mmjax.eval import prompts
    config, workdir, data_dir = trained
    # Every 25th test record: the split is ordered by digit, and all three classes must occur.
    digits = list(sources.get("digit_captions").records(data_dir, "test"))[::25][:40]
    assert len({r["label"] % 3 for r in digits}) == 3
    folders = ["n0001", "n0002", "n0003"]
    for i, record in enumerate(digits):
        folder = tmp_path / "photos" / folders[record["label"] % 3]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(record["image"][..., 0]).save(folder / f"{i}.png")
    summary = build.build(str(tmp_path / "photos"), "ids", data_dir, val_fraction=0, workers=1)
    info = json.loads(open(f"{summary['path']}/mmjax_build.json").read())
    info["class_names"] = ["Zero Or Three", "One or Four", "two or five"]   # as an ImageNet build stores them
    open(f"{summary['path']}/mmjax_build.json", "w").write(json.dumps(info))
    run = setup(config, data_dir=data_dir, devices=jax.devices()[:1])
    spec = dict(type="zeroshot", dataset="ids", split="train", every=1, batch_size=16, seed=0,
                templates="imagenet80")
    model = mmjax.load(workdir, data_dir=data_dir)
    zeroshot = evaluators.EVALUATORS.get("zeroshot")(run, spec, data_dir)
    assert zeroshot.class_names == tuple(info["class_names"]) and len(zeroshot.templates) == 80
    got = zeroshot.run(jax.device_put(model.params))
    z = model.encode_text([t.format(n).lower() for n in info["class_names"] for t in zeroshot.templates])
    z = z.reshape(3, 80, -1).mean(axis=1)
    z /= np.linalg.norm(z, axis=-1, keepdims=True)
    order = sorted(range(len(digits)), key=lambda i: (folders[digits[i]["label"] % 3], f"{i}.png"))
    zimg = model.encode_image([digits[i]["image"] for i in order])
    labels = np.array([digits[i]["label"] % 3 for i in order])
    assert got["top1"] == pytest.approx(np.mean(np.argmax(zimg @ z.T, axis=1) == labels), abs=1e-9)
    assert prompts.prompts(["Ab"], ["A {}."]) == ["a ab."]
