"""Tagged-sentence rows for token classification: a record's CoNLL sentence -> word-piece tokens
and per-piece tag ids (the first piece of each word labelled, the rest IGNORE; data/conll.py)."""

from __future__ import annotations

import grain

from mmjax.data import conll
from mmjax.errors import ConfigError

TAGS = 'tags'   # the batch key whose presence in a task's spec asks for tagged rows


class TagRows(grain.transforms.Map):
    """{'text': 'WORD TAG' lines} -> {'text': tokens int32 [length], 'tags': tag ids int32
    [length]} (IGNORE off first pieces, on [CLS] / [SEP] / padding). Tag ids index `tags`,
    the dataset's tag set; a tag outside it is a bad record (ValueError)."""

    def __init__(self, tokenizer, tags, length: int):
        self.tokenizer, self.length = tokenizer, length
        self.index = {tag: i for i, tag in enumerate(tags)}

    def map(self, element):
        found = conll.read(element['text'].split('\n'))
        if len(found) != 1:
            raise ValueError(f'a tagged record holds {len(found)} sentences, not 1')
        words, tags = found[0]
        unknown = sorted(set(tags) - set(self.index))
        if unknown:
            raise ValueError(f'tags {unknown} are not in the dataset\'s tag set')
        tokens, labels = conll.piece_labels(self.tokenizer, words, [self.index[t] for t in tags],
                                            self.length)
        return {**element, 'text': tokens, TAGS: labels}


def op(dataset, tokenizer, spec) -> TagRows:
    """The transform that makes a tagged dataset's rows, or a ConfigError naming what is missing."""
    if getattr(tokenizer, 'cls_id', None) is None:
        raise ConfigError("tagged rows are [CLS] word pieces [SEP]: set data.tokenizer='wordpiece'")
    tags = getattr(dataset, 'class_names', None)
    if not tags or 'O' not in tags:
        raise ConfigError(f"dataset {getattr(dataset, 'name', dataset)!r} has no tag set: build it "
                          f"with `mmjax data build FILES --kind conll --name NAME`")
    return TagRows(tokenizer, tags, spec['text'].shape[0])

