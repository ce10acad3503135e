"""What the subword tokenizers share: the merge-learning loop (BPE and WordPiece training), GPT-2's
byte alphabet, and [start] ids [end] rows of a fixed length."""

import collections
import heapq
from collections.abc import Callable, Iterator, Sequence

import numpy as np


def pair_merges(words: list[list[str]], freq: list[int],
                join: Callable[[str, str], str]) -> Iterator[tuple[str, str, str]]:
    """Yields (a, b, a·b) merges in the order BPE training takes them: each time the adjacent
    symbol pair that occurs most often in the counted words (`words[i]` occurs `freq[i]`
    times), equal counts going to the pair that sorts first, every occurrence of it replaced by
    `join(a, b)` before the next is chosen. Lazy: the caller stops when its vocabulary is full.
    `words` is rewritten in place."""
    pair_counts = collections.Counter()
    where = collections.defaultdict(set)   # pair -> words that hold (or held) it
    for i, symbols in enumerate(words):
        for pair in zip(symbols, symbols[1:]):
            pair_counts[pair] += freq[i]
            where[pair].add(i)
    heap = [(-n, pair) for pair, n in pair_counts.items()]
    heapq.heapify(heap)
    while heap:
        negative, pair = heapq.heappop(heap)
        if -negative != pair_counts[pair]:   # stale: counts changed since it was pushed
            if pair_counts[pair] > 0:
                heapq.heappush(heap, (-pair_counts[pair], pair))
            continue
        a, b = pair
        new = join(a, b)
        formed = set()   # pairs with `new`: the only ones whose counts grow (the others
        for i in where.pop(pair):   # shrink, and their stale heap entries are caught above)
            symbols, merged, j = words[i], [], 0
            while j < len(symbols):
                if j + 1 < len(symbols) and symbols[j] == a and symbols[j + 1] == b:
                    merged.append(new)
                    j += 2
                else:
                    merged.append(symbols[j])
                    j += 1
            if len(merged) == len(symbols):
                continue
            for old in zip(symbols, symbols[1:]):
                pair_counts[old] -= freq[i]
            for now in zip(merged, merged[1:]):
                pair_counts[now] += freq[i]
                where[now].add(i)
                if new in now:
                    formed.add(now)
            words[i] = merged
        del pair_counts[pair]
        for other in formed:
            heapq.heappush(heap, (-pair_counts[other], other))
        yield a, b, new


def pack_ids(id_lists: Sequence[Sequence[int]], length: int, start_id: int,
             end_id: int, pad_id: int) -> np.ndarray:
    """[start] ids [end] per row, truncated so `end` stays the last real token, padded."""
    if length < 2:
        raise ValueError(f'length must be >= 2 to hold the start and end tokens, got {length}')
    out = np.full((len(id_lists), length), pad_id, dtype=np.int32)
    for row, ids in enumerate(id_lists):
        ids = [start_id, *ids[:length - 2], end_id]
        out[row, :len(ids)] = ids
    return out


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2 map from each byte to a printable unicode char (order matters for ids)."""
    printable = (list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1))
                 + list(range(ord('®'), ord('ÿ') + 1)))
    byte_values, chars = printable[:], printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            byte_values.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(byte_values, map(chr, chars)))
