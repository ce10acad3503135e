"""The run's tokenizer: one function builds it for train, eval, import, export and `mmjax.load`.

A learned vocabulary (WordPiece's, or the byte-level BPE's) is part of the run, like its
config: on first use it is written to `<workdir>/vocab.txt` (WordPiece) or `<workdir>/bpe.json`
(BPE) (by process 0, atomically; gs:// workdirs too) and read from there ever
after, so resuming, evaluating or loading a run never depends on a data dir's cached or
re-trained vocabulary. Where a vocabulary comes from on first use: `data.vocab_file`, else the
data dir's cache, else trained on the data (`tokenizers.get_tokenizer`). Process 0 goes first
and the others read what it wrote; then every process's vocabulary hash is compared, and
processes that would tokenise differently stop with one error naming them and their hosts.
CLIP's BPE is a fixed asset of the package: nothing is written for it.
"""

from __future__ import annotations

import hashlib
import socket

import numpy as np

from mmjax import paths
from mmjax.config import parse_mixture
from mmjax.data.bpe import BpeTokenizer
from mmjax.data.tokenizers import ClipTokenizer, WordPieceTokenizer, get_tokenizer
from mmjax.errors import ConfigError, VocabularyMismatch

LEARNED = {"wordpiece": WordPieceTokenizer, "bpe": BpeTokenizer}   # data.tokenizer -> class
HOST_BYTES = 64


def vocab_path(directory, kind: str = "wordpiece") -> str:
    """Where a workdir (or an export directory) keeps the vocabulary of tokenizer `kind`."""
    return paths.join(directory, LEARNED[kind].vocab_file)


def read_vocab(directory) -> WordPieceTokenizer | BpeTokenizer | None:
    """The tokenizer `directory/vocab.txt` (WordPiece) or `directory/bpe.json` (BPE) holds,
    None if there is neither."""
    for kind in LEARNED.values():
        path = paths.join(directory, kind.vocab_file)
        if paths.resolve(path).is_file():
            return kind.from_vocab(path)
    return None


def kind_of(vocab_text: str) -> str:
    """'bpe' or 'wordpiece': which tokenizer a carried vocabulary text is (bpe.json is JSON)."""
    return "bpe" if vocab_text.startswith("{") else "wordpiece"


def corpus(config) -> tuple[str, ...]:
    """The datasets whose train text a vocabulary is trained on (`data.tokenizer_data`, else
    the training mixture's datasets)."""
    data = config.data
    return tuple(data.get("tokenizer_data") or ()) or tuple(n for n, _ in parse_mixture(data.train))


def run_tokenizer(config, data_dir, workdir=None, write=True):
    """The tokenizer of the run in `workdir`: its `vocab.txt` if it has one, else the config's
    (data dir / `data.vocab_file` / trained), which is then written there if `write`.
    No workdir (a shape-only or throwaway use): the config's. Multi-process callers go through
    `train.setup.prepare_data` (process 0 first, then `check_same_everywhere`)."""
    name = config.data.tokenizer
    if name not in LEARNED:
        return get_tokenizer(name, data_dir)
    if workdir is not None:
        saved = read_vocab(workdir)
        if saved is not None and not isinstance(saved, LEARNED[name]):
            raise ConfigError(f"data.tokenizer={name!r}, but {workdir} holds the vocabulary of a "
                              f"{type(saved).__name__} run; keep the run's data.tokenizer or "
                              f"start a new --workdir")
        if saved is not None:
            return saved
    tokenizer = get_tokenizer(name, data_dir, corpus(config), config.data.get("vocab_file", ""))
    if workdir is not None and write:
        tokenizer.save_vocab(vocab_path(workdir, name))
    return tokenizer


def vocab_text(tokenizer) -> str:
    """The vocabulary as `vocab.txt` / `bpe.json` holds it; '' for CLIP's BPE (fixed)."""
    return "" if isinstance(tokenizer, ClipTokenizer) or tokenizer is None else tokenizer.vocab_text()


def digest(tokenizer) -> bytes:
    """sha256 of the tokenizer's kind and vocabulary: equal digests tokenise alike."""
    return hashlib.sha256(f"{type(tokenizer).__name__}\n{vocab_text(tokenizer)}".encode()).digest()


def check_same_everywhere(tokenizer) -> None:
    """Raises VocabularyMismatch naming the processes (and hosts) whose vocabulary differs from
    process 0's. One all-gather of 32 + 64 bytes; nothing to do on one process."""
    import jax
    from jax.experimental import multihost_utils
    if jax.process_count() == 1:
        return
    host = socket.gethostname().encode()[:HOST_BYTES].ljust(HOST_BYTES, b"\0")
    mine = np.frombuffer(digest(tokenizer) + host, np.uint8)
    every = np.asarray(multihost_utils.process_allgather(mine))   # [processes, 32 + 64]
    hashes = [bytes(row[:32]) for row in every]
    hosts = [bytes(row[32:]).rstrip(b"\0").decode(errors="replace") for row in every]
    differ = [p for p, h in enumerate(hashes) if h != hashes[0]]
    if differ:
        raise VocabularyMismatch(
            "the tokenizer vocabularies differ across processes: process 0 (host " + hosts[0]
            + ", sha256 " + hashes[0].hex()[:12] + ") vs " + ", ".join(
                f"process {p} (host {hosts[p]}, sha256 {hashes[p].hex()[:12]})" for p in differ)
            + "; give every process the same workdir (it holds vocab.txt) or the same "
            "data.vocab_file, or a data_dir they share")


def describe(tokenizer) -> str:
    """One line naming the tokenizer and its vocabulary hash, for the run's log."""
    if isinstance(tokenizer, ClipTokenizer):
        return f"tokenizer clip_bpe ({tokenizer.vocab_size} tokens)"
    name = "bpe" if isinstance(tokenizer, BpeTokenizer) else "wordpiece"
    return (f"tokenizer {name} ({tokenizer.vocab_size} tokens, {tokenizer.vocab_file} sha256 "
            f"{hashlib.sha256(vocab_text(tokenizer).encode()).hexdigest()[:16]})")
