"""The run's tokenizer: one function builds it for train, eval, import, export and `mmjax.load`.

A WordPiece vocabulary is part of the run, like its config: on first use it is written to
`<workdir>/vocab.txt` (by process 0, atomically; gs:// workdirs too) and read from there ever
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
from mmjax.data.tokenizers import ClipTokenizer, WordPieceTokenizer, get_tokenizer
from mmjax.errors import VocabularyMismatch

VOCAB_FILE = "vocab.txt"
HOST_BYTES = 64


def vocab_path(directory) -> str:
    """Where a workdir (or an export directory) keeps its vocabulary."""
    return paths.join(directory, VOCAB_FILE)


def read_vocab(directory) -> WordPieceTokenizer | None:
    """The WordPiece tokenizer `directory/vocab.txt` holds, None if there is none."""
    path = vocab_path(directory)
    return WordPieceTokenizer.from_vocab(path) if paths.resolve(path).is_file() else None


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
    if config.data.tokenizer != "wordpiece":
        return get_tokenizer(config.data.tokenizer, data_dir)
    if workdir is not None:
        saved = read_vocab(workdir)
        if saved is not None:
            return saved
    tokenizer = get_tokenizer("wordpiece", data_dir, corpus(config), config.data.get("vocab_file", ""))
    if workdir is not None and write:
        tokenizer.save_vocab(vocab_path(workdir))
    return tokenizer


def vocab_text(tokenizer) -> str:
    """The vocabulary as `vocab.txt` holds it (one token a line, by id); '' for CLIP's BPE."""
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
    return (f"tokenizer wordpiece ({tokenizer.vocab_size} tokens, vocab.txt sha256 "
            f"{hashlib.sha256(vocab_text(tokenizer).encode()).hexdigest()[:16]})")
