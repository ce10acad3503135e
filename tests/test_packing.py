"""Packed rows that scale with hosts: the global batch is the same on 1, 2, 4 and 8 processes,
each process tokenises 1/P of the documents, a resumed iterator continues without re-reading,
and each window's rows are its own documents of the global stream, tokenised and joined."""

import grain
import jax
import numpy as np
import pytest
from conftest import made_once

from mmjax.data import builders, packing, pipeline, sources
from mmjax.data.tokenizers import WordPieceTokenizer
from mmjax.registry import Registry
from splits import prose_texts

LENGTH, WINDOW, BATCH, STEPS = 128, 2, 16, 3     # rows of 127 tokens + [CLS], 8 windows a batch
SPEC = {'text': jax.ShapeDtypeStruct((LENGTH,), np.int32)}


@pytest.fixture(scope='module')
def prose(tmp_path_factory):
    """The data dir, where 'prose' is the built-in prose read into memory once (not once
    for each of the 15 simulated processes)."""
    data_dir = str(made_once(tmp_path_factory, 'lm_prose',
                             lambda folder: builders.prepare('prose', str(folder))))
    held = sources.get('prose').source(data_dir, 'train')

    class Prose(sources.Prose):
        def source(self, data_dir, split):
            return held

    registry = Registry('dataset', {})
    registry.register('prose')(Prose)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sources, 'DATASETS', registry)
        yield data_dir


@pytest.fixture(scope='module')
def wordpiece(prose):
    return WordPieceTokenizer.train(prose_texts(prose, 'test'), vocab_size=600)


def _read(prose, wordpiece, processes, steps=STEPS, state=None):
    """The first `steps` global batches read by `processes` processes (concatenated in process
    order, as the mesh assembles them), and the tokens each process tokenised."""
    its = [pipeline.batches('prose', data_dir=prose, split='train', spec=SPEC, tokenizer=wordpiece,
                            batch_size=BATCH, seed=5, process_index=p, process_count=processes,
                            pack=True, pack_window=WINDOW)
           for p in range(processes)]
    for it in its:
        if state is not None:
            it.set_state(state)
    batches = []
    for _ in range(steps):
        parts = [next(it) for it in its]
        batches.append({k: np.concatenate([b[k] for b in parts]) for k in parts[0]})
    return batches, its


@pytest.fixture(scope='module')
def one_process(prose, wordpiece):
    return _read(prose, wordpiece, 1)


@pytest.mark.parametrize('processes', [2, 4, 8])
def test_global_batches_are_the_same_and_each_process_tokenises_its_share(
        prose, wordpiece, one_process, processes):
    reference, (single,) = one_process
    batches, its = _read(prose, wordpiece, processes)
    for a, b in zip(reference, batches):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    total = single.packed.counts['tokenised']
    shares = [it.packed.counts['tokenised'] for it in its]
    assert sum(shares) == total     # every window tokenised by exactly one process, once
    assert max(shares) <= 1.6 * total / processes and min(shares) >= 0.5 * total / processes
    windows = [it.packed.counts['windows'] for it in its]
    assert windows == [STEPS * BATCH // WINDOW // processes] * processes
    # D came from the same sample everywhere (counted apart from the windows' tokens).
    assert {it.packed.documents for it in its} == {single.packed.documents}
    assert {it.packed.counts['sampled'] for it in its} == {single.packed.counts['sampled']}


def test_a_resumed_iterator_continues_without_rereading(prose, wordpiece, one_process):
    reference, (single,) = one_process
    _, (first,) = _read(prose, wordpiece, 1, steps=1)
    state = first.get_state()
    resumed, its = _read(prose, wordpiece, 4, steps=STEPS - 1, state=state)
    for a, b in zip(reference[1:], resumed):
        np.testing.assert_array_equal(a['text'], b['text'])
    # Only the resumed batches' windows were tokenised (the first batch's 8 were not).
    assert sum(it.packed.counts['windows'] for it in its) == (STEPS - 1) * BATCH // WINDOW
    far = pipeline.batches('prose', data_dir=prose, split='train', spec=SPEC, tokenizer=wordpiece,
                           batch_size=BATCH, seed=5, pack=True, pack_window=WINDOW)
    far.set_state(state.replace(b'"batches_read": 1', b'"batches_read": 100000'))
    next(far)
    assert far.packed.counts['windows'] == BATCH // WINDOW


def test_each_window_is_its_own_documents_tokenised_and_joined(prose, wordpiece, one_process):
    """Against the documents of the global stream, tokenised one by one: window w's rows
    are documents wD, wD + 1, ... each ended by [SEP], joined, cut at the window's end."""
    reference, (single,) = one_process
    rows = np.concatenate([b['text'] for b in reference])
    assert rows.shape == (STEPS * BATCH, LENGTH) and (rows[:, 0] == wordpiece.cls_id).all()
    assert not (rows == wordpiece.pad_id).any()              # no padding anywhere
    stream = pipeline.global_stream([('prose', 1.0)], data_dir=prose, split='train', spec=SPEC,
                                    seed=5, image_options=None)
    d, width = single.packed.documents, LENGTH - 1
    ends_documents = 0
    for w, window in enumerate(rows[:, 1:].reshape(-1, WINDOW * width)):
        expected = [t for k in range(w * d, w * d + 3 * d)
                    for t in wordpiece.ids([stream[k]['text']])[0] + [wordpiece.sep_id]]
        np.testing.assert_array_equal(window, expected[:WINDOW * width])
        ends_documents += int((window == wordpiece.sep_id).sum())
    assert ends_documents >= len(rows) // WINDOW          # packed: windows join documents
    counts = single.packed.counts
    assert counts['tokenised'] == counts['windows'] * WINDOW * width + counts['dropped']
    assert counts['dropped'] + counts['borrowed'] > 0


def test_the_state_names_the_packing_window(prose, wordpiece, one_process):
    _, (single,) = one_process
    with pytest.raises(ValueError, match='another input'):
        other = pipeline.batches('prose', data_dir=prose, split='train', spec=SPEC,
                                 tokenizer=wordpiece, batch_size=BATCH, seed=5, pack=True,
                                 pack_window=4)
        other.set_state(single.get_state())


def test_rows_skipped_sum_the_documents_that_start_in_them():
    class Tokens:
        eos_id = 0

        def ids(self, texts):
            return [[int(w) for w in t.split()] for t in texts]

    docs = [{'text': '1 2 3', '_skipped': 1}, {'text': '4', '_skipped': 2},
            {'text': '5 6 7 8 9', '_skipped': 4}, {'text': '7', '_skipped': 8}]
    docs = grain.MapDataset.source(docs)
    rows = packing.PackedRows(docs, Tokens(), width=3, rows=2, documents=3)
    tokens, skipped = rows.window(0)
    assert tokens.tolist() == [[1, 2, 3], [0, 4, 0]] and skipped.tolist() == [1, 2]
    assert rows.counts['dropped'] == 6 and rows.counts['borrowed'] == 0
    short = packing.PackedRows(docs, Tokens(), width=4, rows=2, documents=1)
    assert short.window(0)[0].tolist() == [[1, 2, 3, 0], [4, 0, 5, 6]]
    assert short.counts['borrowed'] == 4 and short.counts['dropped'] == 4
