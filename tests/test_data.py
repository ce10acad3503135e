"""Tests of the tfds builders and grain pipelines: splits, sharding, determinism, resume."""

import os
import pathlib
import time

import numpy as np
import pytest

import jax

from mmjax.data import builders, pipeline
from mmjax.data.sources import CAPTION_TEMPLATES, DIGIT_NAMES
from mmjax.data.tokenizers import ClipTokenizer, WordPieceTokenizer
from splits import DIGIT_IMAGES, _examples, digit_arrays, prose_texts

CONTEXT = 16
DIGIT_SPEC = {'image': jax.ShapeDtypeStruct((28, 28, 1), np.float32),
              'text': jax.ShapeDtypeStruct((CONTEXT,), np.int32),
              'label': jax.ShapeDtypeStruct((), np.int32)}


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp('data')
    for name in builders.BUILDERS:
        builders.prepare(name, str(path))
    return str(path)


@pytest.fixture(scope='module')
def clip():
    return ClipTokenizer()


@pytest.fixture(scope='module')
def wordpiece(data_dir):
    return WordPieceTokenizer.train(prose_texts(data_dir, 'test'), vocab_size=1000)


def _digits(data_dir, clip, **kwargs):
    args = dict(data_dir=data_dir, split='test', batch_size=40, tokenizer=clip, spec=DIGIT_SPEC,
                seed=7, image_options=DIGIT_IMAGES)
    return pipeline.batches('digit_captions', **{**args, **kwargs})


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _image_keys(images: np.ndarray) -> list[bytes]:
    return [image.tobytes() for image in images]


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_second_prepare_is_a_cheap_no_op(data_dir):
    files = sorted(p for p in pathlib.Path(data_dir).rglob('*') if p.is_file())
    stamps = [os.stat(p).st_mtime_ns for p in files]
    start = time.perf_counter()
    for name in builders.BUILDERS:
        builders.prepare(name, data_dir)
    assert time.perf_counter() - start < 1.0
    assert sorted(p for p in pathlib.Path(data_dir).rglob('*') if p.is_file()) == files
    assert [os.stat(p).st_mtime_ns for p in files] == stamps


def test_bad_data_dir_gives_a_clear_error(tmp_path):
    blocker = tmp_path / 'a_file'
    blocker.write_text('not a directory')
    bad = blocker / 'data'
    with pytest.raises(builders.DataDirError, match='--data_dir') as error:
        builders.prepare('digit_captions', str(bad))
    assert str(bad) in str(error.value) and isinstance(error.value, OSError)


def test_unknown_dataset_and_default_dir():
    with pytest.raises(ValueError, match='digit_captions, prose, prose_passages, play_genres'):
        builders.prepare('imagenet', '/tmp')
    assert builders.DEFAULT_DATA_DIR == '~/.cache/mmjax'
    assert builders.resolve_data_dir(None) == os.path.expanduser('~/.cache/mmjax')


def test_held_out_digits(data_dir):
    test = digit_arrays(data_dir)
    train = digit_arrays(data_dir, split='train')
    assert test['image'].shape == (1000, 28, 28, 1) and test['image'].dtype == np.float32
    assert test['label'].dtype == np.int32 and len(train['label']) == 4000
    assert np.bincount(test['label']).tolist() == [100] * 10
    assert -1.0 <= test['image'].min() < 0 < test['image'].max() <= 1.0
    assert not set(_image_keys(test['image'])) & set(_image_keys(train['image']))
    assert test['caption'][0] == CAPTION_TEMPLATES[0].format(
        DIGIT_NAMES[test['label'][0]])
    assert all(DIGIT_NAMES[l] in c for l, c in zip(test['label'], test['caption']))


def test_prose_splits(data_dir):
    test = prose_texts(data_dir)
    train = prose_texts(data_dir, 'train')
    assert len(train) > 15_000 and len(test) == (len(train) + len(test)) // 20
    assert all(builders.PROSE_MIN_WORDS <= len(t.split()) <= builders.PROSE_CHUNK_WORDS
               for t in test)
    assert any('Hamlet' in t or 'HAMLET' in t for t in train)  # Shakespeare is in.
    assert any('statement' in t for t in train)                   # So is pydoc.
    assert not set(test) & set(train)


def test_prose_passages_hold_the_prose_in_twice_its_chunks(data_dir):
    """The passages are the same words as the prose, cut twice as long: each passage is two
    consecutive prose chunks of one document (the test split every 10th)."""
    passages = {s: [e['text'] for e in _examples('prose_passages', data_dir, s)]
                for s in ('train', 'test')}
    chunks = prose_texts(data_dir, 'train') + prose_texts(data_dir, 'test')
    assert len(passages['test']) == (len(passages['train']) + len(passages['test'])) // 10
    assert not set(passages['test']) & set(passages['train'])
    assert all(len(t.split()) <= 2 * builders.PROSE_CHUNK_WORDS for t in passages['test'])
    # A full passage is two chunks joined; the passages hold as many words as the chunks
    # (give or take the short tails each drops: under 8 words per document).
    half = builders.PROSE_CHUNK_WORDS
    whole = set(chunks)
    full = [t.split() for t in passages['test'] if len(t.split()) == 2 * half]
    assert len(full) > 900 and all(' '.join(w[:half]) in whole and ' '.join(w[half:]) in whole
                                   for w in full)
    words = lambda texts: sum(len(t.split()) for t in texts)
    assert abs(words(passages["train"] + passages["test"]) - words(chunks)) < 8 * 120


def test_clip_batches_shapes_and_captions(data_dir, clip):
    batch = next(_digits(data_dir, clip))
    assert batch['image'].shape == (40, 28, 28, 1) and batch['image'].dtype == np.float32
    assert batch['text'].shape == (40, CONTEXT) and batch['text'].dtype == np.int32
    assert batch['label'].shape == (40,) and batch['label'].dtype == np.int32
    assert -1.0 <= batch['image'].min() and batch['image'].max() <= 1.0
    templates_seen = set()
    for text, label in zip(batch['text'], batch['label']):
        candidates = [t.format(DIGIT_NAMES[label]) for t in CAPTION_TEMPLATES]
        caption = clip.decode(text)
        assert caption in candidates
        templates_seen.add(candidates.index(caption))
        assert text[0] == clip.sot_id and text.argmax() == np.flatnonzero(text)[-1]
    assert len(templates_seen) > 1


def test_same_seed_same_order_other_seed_differs(data_dir, clip):
    a = _take(_digits(data_dir, clip), 3)
    _assert_same_batches(a, _take(_digits(data_dir, clip), 3))
    b = _take(_digits(data_dir, clip, seed=8), 3)
    assert not np.array_equal(a[0]['image'], b[0]['image'])


def test_epochs_reshuffle_and_redraw_captions(data_dir, clip):
    one = _take(_digits(data_dir, clip, batch_size=1000), 2)  # Two epochs of the test split.
    assert sorted(_image_keys(one[0]['image'])) == sorted(_image_keys(one[1]['image']))
    assert not np.array_equal(one[0]['image'], one[1]['image'])
    order = [np.argsort(_image_keys(b['image'])) for b in one]
    assert not np.array_equal(one[0]['text'][order[0]], one[1]['text'][order[1]])


def test_process_shards_are_disjoint_and_cover_an_epoch(data_dir, clip):
    shards = []
    for index in range(2):
        it = _digits(data_dir, clip, batch_size=200, num_epochs=1, process_index=index,
                     process_count=2)
        batches = list(it)
        assert len(set(batches[0]['label'].tolist())) == 10  # Not one class range per process.
        shards.append([k for b in batches for k in _image_keys(b['image'])])
    assert len(shards[0]) == len(shards[1]) == 500
    assert not set(shards[0]) & set(shards[1])
    everything = _image_keys(digit_arrays(data_dir)['image'])
    assert set(shards[0]) | set(shards[1]) == set(everything)


def test_finite_epochs_drop_the_remainder(data_dir, clip):
    batches = list(_digits(data_dir, clip, batch_size=300, num_epochs=2, shuffle=False))
    assert len(batches) == 6 and all(len(b['label']) == 300 for b in batches)


@pytest.mark.parametrize('steps', [3, 27])  # 27 batches of 40 cross the epoch end (25).
def test_clip_resume_from_state_is_exact(data_dir, clip, steps):
    it = _digits(data_dir, clip)
    _take(it, steps)
    state = it.get_state()
    expected = _take(it, 4)
    resumed = _digits(data_dir, clip)
    resumed.set_state(state)
    _assert_same_batches(expected, _take(resumed, 4))


def test_state_of_another_pipeline_is_rejected(data_dir, clip):
    it = _digits(data_dir, clip)
    next(it)
    with pytest.raises(ValueError, match='another input'):
        _digits(data_dir, clip, seed=8).set_state(it.get_state())


def test_text_batches(data_dir, wordpiece):
    def make(**kwargs):
        args = dict(data_dir=data_dir, split='test', batch_size=16, tokenizer=wordpiece,
                    spec={'text': jax.ShapeDtypeStruct((32,), np.int32)}, seed=1,
                    process_index=1, process_count=2)
        return pipeline.batches('prose', **{**args, **kwargs})

    it = make()
    batch = next(it)
    assert set(batch) == {'text', '_skipped', '_bad'} and not batch['_skipped'].any()
    tokens = batch['text']
    assert tokens.shape == (8, 32) and tokens.dtype == np.int32   # this process's half of 16
    assert (tokens[:, 0] == wordpiece.cls_id).all()
    assert ((tokens == wordpiece.sep_id).sum(axis=1) == 1).all()
    _take(it, 2)
    state = it.get_state()
    resumed = make()
    resumed.set_state(state)
    _assert_same_batches(_take(it, 3), _take(resumed, 3))
    _assert_same_batches(_take(make(), 1), [batch])  # Same seed, same first batch.


def test_play_genres_are_labelled_chunks_of_the_plays(data_dir):
    from mmjax.data import sources
    dataset = sources.get('play_genres')
    train = list(dataset.records(data_dir, 'train'))
    test = list(dataset.records(data_dir, 'test'))
    assert len(train) > 8 * len(test) > 0
    labels = np.bincount([int(r['label']) for r in train], minlength=6)
    assert len(labels) == 6 and labels.min() > 100       # all six genres, none tiny
    assert not {r['text'] for r in test} & {r['text'] for r in train}
    romeo = [r for r in train if b'Romeo' in r['text']]
    assert romeo and {int(r['label']) for r in romeo} == {dataset.class_names.index('tragedies')}


def test_collate_normalises_images_and_tokenises():
    from mmjax.data.images import EvalImage, ImageOptions
    from mmjax.data.transforms import Collate
    ramp = np.linspace(0, 1, 14)
    grey = (255 * np.outer(ramp, 1 - ramp / 2))[..., None].round().astype(np.uint8)   # smooth
    rgb = np.repeat(np.kron(grey, np.ones((2, 2, 1), np.uint8)), 3, axis=-1)   # 28x28x3, same picture
    options = ImageOptions(size=14, channels=1, mean=(0.5,) * 3, std=(0.5,) * 3)
    spec = {'image': jax.ShapeDtypeStruct((14, 14, 1), np.float32),
            'text': jax.ShapeDtypeStruct((CONTEXT,), np.int32)}
    fit = EvalImage(options)
    examples = [fit.map({'image': grey, 'text': 'a photo'}), fit.map({'image': rgb, 'text': 'a photo'})]
    batch = Collate(spec, ClipTokenizer(), options)(examples)
    assert batch['image'].shape == (2, 14, 14, 1) and batch['text'].shape == (2, CONTEXT)
    np.testing.assert_allclose(batch['image'][0], grey / 127.5 - 1.0, atol=1e-6)   # untouched
    # grey -> RGB -> grey and a 2x downscale of a 2x blow-up: close to the original picture
    assert np.abs(batch['image'][1] - batch['image'][0]).mean() < 0.02
    np.testing.assert_array_equal(batch['text'][0], batch['text'][1])
    clip_stats = Collate(spec, ClipTokenizer(), ImageOptions(size=14, channels=1))(examples[:1])
    mean, std = np.mean(ImageOptions().mean), np.mean(ImageOptions().std)
    np.testing.assert_allclose(clip_stats['image'][0], (grey / 255 - mean) / std, atol=1e-5)
