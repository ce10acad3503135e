"""gs:// workdirs and data dirs, against a local GCS emulator (tests/gcs_emulator.py):
`mmjax data build`, `mmjax train` (checkpoints, metrics, TensorBoard, resume), `mmjax eval`,
export and `mmjax.load`, with nothing written to local disk under a 'gs:' folder."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import gcs_emulator
from mmjax import paths

CLASSES = ("circle", "square", "cross")


@pytest.fixture(scope="module")
def bucket():
    """An emulated gs://bucket for this module; this process and its children use it."""
    server, env = gcs_emulator.start("bucket")
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield "gs://bucket"
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def run_mmjax(cwd, *args):
    """`mmjax ARGS` in a fresh process run from `cwd`; its last JSON line."""
    done = subprocess.run([sys.executable, "-m", "mmjax.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=900,
                          env={**os.environ, "PYTHONPATH": os.getcwd(),
                               "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_local_paths_are_absolute_and_uris_are_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert str(paths.resolve("runs/a")) == str(tmp_path / "runs" / "a")
    assert str(paths.resolve("gs://b/runs/a")) == "gs://b/runs/a"
    assert paths.join("gs://b/runs", "a", "config.json") == "gs://b/runs/a/config.json"
    assert paths.join("runs", "a") == os.path.join("runs", "a")
    assert paths.is_remote("gs://b") and not paths.is_remote("/tmp/gs")


def test_write_text_replaces_whole_files_locally_and_in_a_bucket(tmp_path, bucket):
    for target in (tmp_path / "d" / "f.json", f"{bucket}/d/f.json"):
        paths.write_text(target, "old")
        paths.write_text(target, "new")
        assert paths.resolve(target).read_text() == "new"
    assert sorted(os.listdir(tmp_path / "d")) == ["f.json"]  # no temporary left behind


def test_upload_tree_copies_every_file_and_the_marker_last(tmp_path, bucket, monkeypatch):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name, data in (("a/x.bin", b"\0" * 5), ("a/b/y.txt", b"y"), ("z.json", b"{}")):
        (tmp_path / name).write_bytes(data)
    order = []
    real_open = type(paths.resolve(bucket)).open
    monkeypatch.setattr(type(paths.resolve(bucket)), "open",
                        lambda self, mode="r", **kw: order.append(self.name) or real_open(self, mode, **kw))
    paths.upload_tree(tmp_path, f"{bucket}/tree", last="z.json")
    monkeypatch.undo()
    assert order[-1] == "z.json" and sorted(order) == ["x.bin", "y.txt", "z.json"]
    assert paths.resolve(f"{bucket}/tree/a/x.bin").read_bytes() == b"\0" * 5
    assert paths.resolve(f"{bucket}/tree/a/b/y.txt").read_text() == "y"


def _shapes(root, per_class=8, size=28):
    """Gray PNGs of three drawn shapes, one folder per class (an image folder)."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = rng.integers(0, 40, (size, size)).astype(np.uint8)
            lo, hi = 6 + i % 3, 20 + i % 4
            if name == "square":
                image[lo:hi, lo:hi] = 255
            elif name == "cross":
                image[lo:hi, 13:15] = image[13:15, lo:hi] = 255
            else:
                yy, xx = np.mgrid[:size, :size]
                image[(yy - 14) ** 2 + (xx - 14) ** 2 < (hi - lo) ** 2 / 4] = 255
            Image.fromarray(image, "L").save(root / name / f"{i}.png")


def test_a_gs_path_without_gcsfs_names_the_install(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gcsfs" else real(name, *a))
    with pytest.raises(paths.MissingFilesystem, match=r"pip install -e '\.\[gcs\]'"):
        paths.resolve("gs://bucket/run")


@pytest.mark.slow  # ~1 min: five mmjax commands against the emulator
def test_train_resume_eval_and_export_on_gs(tmp_path, bucket):
    """The whole run lives in the bucket: the dataset is built into it, training writes its
    checkpoints, metrics and TensorBoard there and resumes from them, and `mmjax eval`,
    export and `mmjax.load` read it back. Nothing lands on local disk under 'gs:'."""
    _shapes(tmp_path / "shapes")
    data_dir, workdir = f"{bucket}/data", f"{bucket}/runs/smoke"
    built = run_mmjax(tmp_path, "data", "build", str(tmp_path / "shapes"), "--name", "shapes",
                      "--data_dir", data_dir, "--val_fraction", "0", "--workers", "1")
    assert built["path"] == f"{data_dir}/shapes/1.0.0" and built["examples"] == 24
    run = ("train", "--config", os.path.abspath("configs/smoke_clip.py"), "--workdir", workdir,
           "--data_dir", data_dir, "--config.data.train=shapes", "--config.train.batch_size=8",
           "--config.train.checkpoint_every=2", "--config.train.log_every=1",
           "--config.train.eval_every=2", "--config.evals.zeroshot.dataset=shapes",
           "--config.evals.zeroshot.split=train", "--config.evals.retrieval.dataset=shapes",
           "--config.evals.retrieval.split=train")
    run_mmjax(tmp_path, *run, "--config.train.steps=3")
    root = paths.resolve(workdir)
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["2", "3"]
    last = run_mmjax(tmp_path, *run, "--config.train.steps=5")     # resumes at step 3
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["3", "4", "5"]
    records = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 3, 4, 5]
    assert [r["step"] for r in records if "eval/zeroshot/top1" in r] == [2, 3, 4, 5]  # 3: the first run's last
    assert any(p.name.startswith("events.out.tfevents") for p in (root / "tensorboard").iterdir())
    assert json.loads((root / "config.json").read_text())["train"]["steps"] == 5

    evaluated = run_mmjax(tmp_path, "eval", "--workdir", workdir, "--data_dir", data_dir)
    assert evaluated["step"] == 5
    assert evaluated["eval/zeroshot/top1"] == pytest.approx(last["eval/zeroshot/top1"], abs=1e-9)

    import mmjax
    from mmjax import export
    export.export(workdir, "params", f"{bucket}/exports/smoke")
    model = mmjax.load(f"{bucket}/exports/smoke", data_dir=data_dir)
    photo = np.asarray(Image.open(tmp_path / "shapes" / "square" / "0.png"))
    assert model.encode_image([photo]).shape == (1, model.config.model.embed_dim)
    assert not os.path.exists(tmp_path / "gs:") and not os.path.exists("gs:")
