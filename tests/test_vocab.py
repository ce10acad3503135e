"""The vocabulary is part of the run: written to the workdir on first use and read from there
(eval, `mmjax.load`, import, exports), the same on every process, or an error naming them."""

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

import gcs_emulator
import mmjax
from conftest import run_mmjax
from mmjax import config as config_lib
from mmjax import export, paths
from mmjax.data import builders, vocab
from mmjax.data.tokenizers import WORDPIECE_CACHE_SIZE, WordPieceTokenizer
from splits import prose_texts

# The smallest smoke MLM: one narrow layer, two steps.
TINY_MLM = ["--config", "configs/smoke_mlm.py", "--config.model.text.width=32",
            "--config.model.text.depth=1", "--config.model.text.num_heads=2",
            "--config.model.text.mlp_dim=64", "--config.model.text.context_length=32",
            "--config.train.steps=2", "--config.train.batch_size=8", "--config.train.log_every=2",
            "--config.optim.warmup_steps=1"]
TEXTS = ["To be, or not to be: that is the question.", "Naïve café coöperation über alles",
         "def f(x): return x ** 2  # squares", "zyzzyva quixotically"]


def cached_vocab(data_dir):
    """Where `mmjax train` caches the WordPiece vocabulary it trains in a data dir."""
    return os.path.join(builders.resolve_data_dir(str(data_dir)), f"wordpiece_vocab_{WORDPIECE_CACHE_SIZE}.txt")


def other_vocab(path):
    """Writes a valid but different WordPiece vocabulary to `path` (what another host's data
    dir, or a changed data dir, would hold)."""
    words = "the a of and to in is be not that question photo digit x return".split()
    WordPieceTokenizer.train([" ".join(words)] * 5, vocab_size=120).save_vocab(str(path))


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory):
    """The tiny MLM trained 2 steps by `mmjax train`: (workdir, data_dir, the vocab.txt text
    the data dir held then, the final evaluation's metrics)."""
    data_dir, workdir = tmp_path_factory.mktemp("data"), tmp_path_factory.mktemp("run")
    metrics = run_mmjax("train", *TINY_MLM, "--workdir", str(workdir), "--data_dir", str(data_dir))
    with open(cached_vocab(data_dir), encoding="utf-8") as f:
        trained = f.read()
    return str(workdir), str(data_dir), trained, metrics


def test_vocab_is_written_to_the_workdir_and_read_from_there(mlm_run):
    workdir, data_dir, trained, metrics = mlm_run
    with open(os.path.join(workdir, "vocab.txt"), encoding="utf-8") as f:
        assert f.read() == trained
    reference = WordPieceTokenizer.from_vocab(os.path.join(workdir, "vocab.txt"))
    context = 32
    expected = reference.encode(TEXTS, context)
    before = mmjax.load(workdir, data_dir=data_dir)
    assert np.array_equal(before.tokenize(TEXTS), expected)
    fill = before.fill_mask("to be or [MASK] to be")

    other_vocab(cached_vocab(data_dir))  # the data dir's vocabulary changes after training ...
    changed = WordPieceTokenizer.from_vocab(cached_vocab(data_dir)).encode(TEXTS, context)
    assert not np.array_equal(changed, expected)  # ... to one that tokenises differently
    evaluated = run_mmjax("eval", "--workdir", workdir, "--data_dir", data_dir)
    assert evaluated["step"] == 2 and "eval/mlm/accuracy" in metrics
    assert {k: evaluated[k] for k in metrics} == pytest.approx(metrics, abs=1e-9)
    after = mmjax.load(workdir, data_dir=data_dir)
    assert np.array_equal(after.tokenize(TEXTS), expected)
    assert after.fill_mask("to be or [MASK] to be") == fill

    os.remove(cached_vocab(data_dir))  # ... or is deleted
    empty = mmjax.load(workdir, data_dir=data_dir)
    assert np.array_equal(empty.tokenize(TEXTS), expected)
    assert not os.path.exists(cached_vocab(data_dir))  # nothing was trained again
    other_vocab(cached_vocab(data_dir))


def test_exports_carry_the_vocab_and_transformers_tokenises_like_mmjax(mlm_run, tmp_path):
    from transformers import AutoTokenizer, BertTokenizer
    workdir, data_dir, trained, _ = mlm_run
    if os.path.exists(cached_vocab(data_dir)):
        os.remove(cached_vocab(data_dir))
    other_vocab(cached_vocab(data_dir))  # whatever the data dir holds now plays no part
    texts = TEXTS + prose_texts(data_dir, "test")[:8]  # the last ones longer than 32 tokens
    ours = mmjax.load(workdir, data_dir=data_dir).tokenize(texts)
    assert (ours[:, -1] != 0).any() and (ours == 0).any()  # truncated rows and padded ones

    out = str(tmp_path / "bert")
    assert export.export(workdir, "hf_bert", out)["vocab"]
    with open(os.path.join(out, "vocab.txt"), encoding="utf-8") as f:
        assert f.read() == trained
    for cls in (BertTokenizer, AutoTokenizer):
        theirs = cls.from_pretrained(out)(texts, padding="max_length", truncation=True,
                                          max_length=ours.shape[1], return_tensors="np")
        assert np.array_equal(theirs["input_ids"], ours), cls
        assert np.array_equal(theirs["attention_mask"], ours != 0)

    # mmjax import of that export: the new run's vocabulary is the export's.
    imported = str(tmp_path / "imported")
    export.import_weights("hf_bert", out, imported, data_dir)
    with open(os.path.join(imported, "vocab.txt"), encoding="utf-8") as f:
        assert f.read() == trained
    # A params export carries it too, and `mmjax.load` reads it from there.
    params = str(tmp_path / "params")
    export.export(workdir, "params", params)
    shutil.copy(os.path.join(params, "vocab.txt"), tmp_path / "kept.txt")
    assert np.array_equal(mmjax.load(params, data_dir=data_dir).tokenize(texts), ours)
    st = str(tmp_path / "model.safetensors")
    export.export(workdir, "safetensors", st)
    assert export.carried_vocab("safetensors", st) == trained


def test_training_gives_one_vocabulary_close_to_hf_trainers(mlm_run, tmp_path):
    """Processes train the same vocabulary from the same text (HF's WordPieceTrainer gives
    another one each run at this size: count ties); at 1,000 tokens it is HF's up to ties:
    >= 97% of the tokens shared, the same number of tokens (to 0.5%) for the text, no [UNK]."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    texts = prose_texts(mlm_run[1], "test")
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    script = ("import json, sys; from mmjax.data.tokenizers import WordPieceTokenizer as W; "
              "W.train(json.load(open(sys.argv[1])), 4000).save_vocab(sys.argv[2])")
    for seed in ("1", "2", "3"):
        subprocess.run([sys.executable, "-c", script, str(tmp_path / "texts.json"),
                        str(tmp_path / f"vocab_{seed}.txt")], check=True,
                       env=dict(os.environ, PYTHONHASHSEED=seed))
    assert len({(tmp_path / f"vocab_{seed}.txt").read_bytes() for seed in "123"}) == 1
    ours = WordPieceTokenizer.train(texts, 1000)
    hf = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    hf.normalizer = normalizers.BertNormalizer(lowercase=True)
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=1000, show_progress=False,
                                                            special_tokens=["[PAD]", "[UNK]"]))
    shared = set(ours._tok.get_vocab()) & set(hf.get_vocab())
    assert ours.vocab_size == 1000 and len(shared) >= 970, len(shared)
    n_ours = sum(map(len, ours.ids(texts)))
    n_hf = sum(len(e.ids) for e in hf.encode_batch(texts, add_special_tokens=False))
    assert abs(n_ours - n_hf) <= 0.005 * n_hf, (n_ours, n_hf)
    assert not any(ours.unk_id in row for row in ours.ids(texts))


def test_a_gs_workdir_holds_the_vocab(tmp_path, monkeypatch):
    """`run_tokenizer` writes a gs:// workdir's vocab.txt (one upload) and reads it back
    once the data dir's is gone."""
    server, env = gcs_emulator.start("bucket")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    try:
        config = config_lib.load("configs/smoke_mlm.py")
        data_dir = str(tmp_path / "data")
        os.makedirs(builders.resolve_data_dir(data_dir))
        other_vocab(cached_vocab(data_dir))
        with open(cached_vocab(data_dir), encoding="utf-8") as f:
            text = f.read()
        first = vocab.run_tokenizer(config, data_dir, "gs://bucket/run")
        assert paths.resolve("gs://bucket/run/vocab.txt").read_text() == text
        os.remove(cached_vocab(data_dir))
        again = vocab.run_tokenizer(config, data_dir, "gs://bucket/run")
        assert again.vocab_text() == first.vocab_text() == text
        assert not os.path.exists(cached_vocab(data_dir)) and not os.path.exists("gs:")
    finally:
        server.stop()


def test_differing_vocabularies_name_the_processes_and_hosts(monkeypatch, tmp_path):
    """The check across processes, with process_allgather answering for 3 processes, the
    last of which holds another vocabulary."""
    import jax
    from jax.experimental import multihost_utils

    from mmjax.errors import VocabularyMismatch
    other_vocab(tmp_path / "a.txt")
    mine = WordPieceTokenizer.from_vocab(str(tmp_path / "a.txt"))
    theirs = WordPieceTokenizer.train(["completely different words here"] * 5, vocab_size=60)
    rows = [np.frombuffer(vocab.digest(t) + h.ljust(vocab.HOST_BYTES, b"\0"), np.uint8)
            for t, h in ((mine, b"host-a"), (mine, b"host-b"), (theirs, b"host-c"))]
    monkeypatch.setattr(jax, "process_count", lambda: 3)
    monkeypatch.setattr(multihost_utils, "process_allgather", lambda x: np.stack(rows))
    with pytest.raises(VocabularyMismatch, match=r"process 0 \(host host-a, sha256 \w+\) vs "
                                                r"process 2 \(host host-c, sha256 \w+\); give"):
        vocab.check_same_everywhere(mine)
    rows[2] = rows[1]
    vocab.check_same_everywhere(mine)   # all alike: no error


def _train_two_processes(tmp_path, workdirs, data_dirs):
    """`mmjax train` of the tiny MLM as 2 processes x 1 CPU device, each with its own workdir
    and data dir arguments: (return codes, logs)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    procs = []
    for i in range(2):
        env = dict(os.environ, JAX_PLATFORMS="cpu", MMJAX_COORDINATOR=f"127.0.0.1:{port}",
                   MMJAX_NUM_PROCESSES="2", MMJAX_PROCESS_ID=str(i),
                   XLA_FLAGS=" ".join(flags + ["--xla_force_host_platform_device_count=1"]))
        log = open(tmp_path / f"proc_{i}.log", "w")
        procs.append((subprocess.Popen(
            [sys.executable, "-m", "mmjax.cli", "train", *TINY_MLM, "--workdir", str(workdirs[i]),
             "--data_dir", str(data_dirs[i])], stdout=log, stderr=subprocess.STDOUT, env=env), log))
    codes = []
    for proc, log in procs:
        codes.append(proc.wait(timeout=600))
        log.close()
    return codes, [(tmp_path / f"proc_{i}.log").read_text() for i in range(2)]


@pytest.mark.slow
def test_two_processes_with_different_data_dirs_tokenise_alike_or_stop(tmp_path):
    """Process 1's data dir holds another vocabulary. One workdir: both use the vocabulary
    process 0 wrote there. Two workdirs (process 1 cannot see process 0's): an error naming
    process 1 and its host, on both processes."""
    data_dirs = [tmp_path / "data0", tmp_path / "data1"]
    os.makedirs(builders.resolve_data_dir(str(data_dirs[1])))
    other_vocab(cached_vocab(data_dirs[1]))
    workdir = tmp_path / "run"
    codes, logs = _train_two_processes(tmp_path, [workdir, workdir], data_dirs)
    assert codes == [0, 0], logs
    with open(workdir / "vocab.txt", "rb") as f:
        written = f.read()
    with open(cached_vocab(data_dirs[0]), "rb") as f:
        assert f.read() == written  # process 0's, trained on its data
    digest = hashlib.sha256(written).hexdigest()[:16]
    for i, log in enumerate(logs):
        assert re.findall(rf"process {i}: tokenizer wordpiece \(\d+ tokens, vocab.txt sha256 (\w+)\)",
                          log) == [digest], log

    codes, logs = _train_two_processes(tmp_path, [tmp_path / "run0", tmp_path / "run1"], data_dirs)
    assert codes == [2, 2], logs
    for log in logs:
        assert "the tokenizer vocabularies differ across processes" in log, log
        assert f"process 1 (host {socket.gethostname()}" in log, log
