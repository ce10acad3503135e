"""Entity-level scores of tagged sentences (CoNLL's conlleval definition): spans from BIO / IOBES
tags, precision / recall / F1 per entity type and their micro and macro averages.

A tag is 'O' or PREFIX-TYPE, PREFIX one of B (begin), I (inside), E (end), S (single). A span
is a maximal run conlleval would read as one chunk: it starts at B or S, at an I or E that
follows O, E or S or a tag of another type; it ends before B, S or O, after E or S, or where
the type changes. Lenient like conlleval (an I after O opens a span), so a model's stray tags
count as the spans they would be in CoNLL's scorer. Spans never cross sentences. A predicted
span is correct when a true span has the same type, start and end.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence


def _split(tag: str) -> tuple[str, str]:
    """('B', 'PER') of 'B-PER'; ('O', '') of 'O'; a bare type-less prefix ('B') has type '_'."""
    if tag == "O":
        return "O", ""
    prefix, _, kind = tag.partition("-")
    return prefix, kind or "_"


def _ends(prev, now):
    """Does the span holding the previous tag end before this one? (prefix, type) pairs."""
    (p, pt), (n, nt) = prev, now
    return p in "ES" or (p in "BI" and n in "BSO") or (p != "O" and pt != nt)


def _starts(prev, now):
    """Does a span start at this tag?"""
    (p, pt), (n, nt) = prev, now
    return n in "BS" or (n in "IE" and p in "OES") or (n != "O" and pt != nt)


def spans(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """{(type, first, last)} of one sentence's tags (inclusive token indices)."""
    out, begin, prev = set(), 0, ("O", "")
    for i, tag in enumerate([*tags, "O"]):
        now = _split(tag)
        if _ends(prev, now) and prev[0] != "O":
            out.add((prev[1], begin, i - 1))
        if _starts(prev, now):
            begin = i
        prev = now
    return out


def _prf(correct, predicted, true):
    p = correct / predicted if predicted else 0.0
    r = correct / true if true else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def scores(true: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
    """{'<type>/precision' ... '<type>/f1', '<type>/support', 'micro/...', 'macro/...'} over
    sentences of true and predicted tags (equal lengths). Types: those of the true or the
    predicted spans; macro is the unweighted mean over them of each type's P, R and F1."""
    correct, n_pred, n_true = Counter(), Counter(), Counter()
    for t_tags, p_tags in zip(true, pred, strict=True):
        if len(t_tags) != len(p_tags):
            raise ValueError(f"a sentence has {len(t_tags)} true tags and {len(p_tags)} predicted")
        t_spans, p_spans = spans(t_tags), spans(p_tags)
        correct.update(kind for kind, _, _ in t_spans & p_spans)
        n_true.update(kind for kind, _, _ in t_spans)
        n_pred.update(kind for kind, _, _ in p_spans)
    out, per_type = {}, []
    for kind in sorted(set(n_true) | set(n_pred)):
        prf = _prf(correct[kind], n_pred[kind], n_true[kind])
        per_type.append(prf)
        out.update({f"{kind}/precision": prf[0], f"{kind}/recall": prf[1], f"{kind}/f1": prf[2],
                    f"{kind}/support": float(n_true[kind])})
    micro = _prf(sum(correct.values()), sum(n_pred.values()), sum(n_true.values()))
    macro = [sum(x[i] for x in per_type) / len(per_type) if per_type else 0.0 for i in range(3)]
    for name, (p, r, f) in (("micro", micro), ("macro", macro)):
        out.update({f"{name}/precision": p, f"{name}/recall": r, f"{name}/f1": f})
    return out
