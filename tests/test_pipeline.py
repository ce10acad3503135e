"""The input pipeline's guarantees: the global batch is a function of seed and step alone,
mixtures follow their weights, bad records are replaced and counted, MLM rows pack whole
documents, and image transforms crop and decode as specified (against numpy / Pillow)."""

import io
import json

import jax
import numpy as np
import pytest
from PIL import Image

from mmjax.config import ConfigError
from mmjax.data import builders, images, pipeline, sources, transforms
from mmjax.data.tokenizers import ClipTokenizer, WordPieceTokenizer
from mmjax.registry import Registry
from splits import DIGIT_IMAGES, prose_texts

SPEC = {'image': jax.ShapeDtypeStruct((28, 28, 1), np.float32),
        'text': jax.ShapeDtypeStruct((16,), np.int32),
        'label': jax.ShapeDtypeStruct((), np.int32)}


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp('data')
    for name in builders.BUILDERS:
        builders.prepare(name, str(path))
    return str(path)


def _global(train, data_dir, process_count, steps, batch_size=24, spec=SPEC, tokenizer=None,
            state=None, **kwargs):
    """The first `steps` global batches, read by `process_count` processes and concatenated
    in process order (as the mesh assembles them)."""
    tokenizer = tokenizer or ClipTokenizer()
    its = [pipeline.batches(train, data_dir=data_dir, split='train', spec=spec, tokenizer=tokenizer,
                            batch_size=batch_size, seed=3, image_options=DIGIT_IMAGES,
                            process_index=p, process_count=process_count, **kwargs)
           for p in range(process_count)]
    if state is not None:
        for it in its:
            it.set_state(state)
    out = []
    for _ in range(steps):
        parts = [next(it) for it in its]
        out.append({k: np.concatenate([b[k] for b in parts]) for k in parts[0]})
    return out, its


def _assert_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.mark.parametrize('process_count', [2, 3])
def test_global_batches_do_not_depend_on_the_process_count(data_dir, process_count):
    one, _ = _global('digit_captions', data_dir, 1, 4)
    many, _ = _global('digit_captions', data_dir, process_count, 4)
    _assert_equal(one, many)


def test_an_epoch_reads_each_record_once_over_processes(data_dir):
    keys = []
    for p in range(3):
        it = pipeline.batches('digit_captions', data_dir=data_dir, split='test', spec=SPEC,
                              tokenizer=ClipTokenizer(), batch_size=30, seed=0, num_epochs=1,
                              image_options=DIGIT_IMAGES, process_index=p, process_count=3)
        keys.append([row.tobytes() for b in it for row in b['image']])
    assert len(keys[0]) == len(keys[1]) == len(keys[2]) == 330   # 33 global batches of 30
    every = [k for ks in keys for k in ks]
    assert len(set(every)) == len(every)                           # no record read twice


@pytest.mark.parametrize('after', [1, 2, 3])
def test_resume_on_another_process_count_continues_the_sequence(data_dir, after):
    whole, _ = _global('digit_captions', data_dir, 1, 5)
    _, its = _global('digit_captions', data_dir, 2, 2)
    state = its[0].get_state()
    assert state == its[1].get_state()          # the position is global
    resumed, _ = _global('digit_captions', data_dir, after, 3, state=state)
    _assert_equal(whole[2:], resumed)


def test_state_names_what_it_was_read_from(data_dir):
    _, its = _global('digit_captions', data_dir, 1, 1)
    saved = json.loads(its[0].get_state())
    assert saved == {'batches_read': 1, 'train': 'digit_captions', 'seed': 3, 'batch_size': 24,
                     'pack': False}
    with pytest.raises(ValueError, match='another input'):
        _global('digit_captions', data_dir, 1, 1, batch_size=48, state=its[0].get_state())


def test_mixture_follows_its_weights(data_dir):
    spec = {'text': jax.ShapeDtypeStruct((16,), np.int32)}
    batches, _ = _global('digit_captions:0.75,prose:0.25', data_dir, 1, 10, batch_size=40,
                         spec=spec)
    clip = ClipTokenizer()
    texts = [clip.decode(row) for b in batches for row in b['text']]
    digits = sum(t.startswith(('a ', 'an ', 'the ')) and 'digit' in t or 'number' in t
                 or 'handwritten' in t or 'black and white' in t for t in texts)
    assert abs(digits / len(texts) - 0.75) < 0.05
    two, _ = _global('digit_captions:0.75,prose:0.25', data_dir, 2, 10, batch_size=40, spec=spec)
    _assert_equal(batches, two)


def test_parse_mixture():
    assert pipeline.parse_mixture('a') == [('a', 1.0)]
    assert pipeline.parse_mixture('a:3, b:1') == [('a', 0.75), ('b', 0.25)]
    assert pipeline.parse_mixture('pkg.mod:Class') == [('pkg.mod:Class', 1.0)]
    with pytest.raises(ConfigError, match='positive'):
        pipeline.parse_mixture('a:0')


class _Flaky(sources.Dataset):
    """Ten records, two of them undecodable image bytes."""

    features = ('image', 'text')

    def source(self, data_dir, split):
        good = io.BytesIO()
        Image.fromarray(np.full((8, 8), 200, np.uint8)).save(good, format='PNG')
        return [{'image': b'\xff\xd8 not a jpeg' if i in (3, 7) else good.getvalue(),
                 'text': f'record {i}'.encode()} for i in range(10)]

    def example_ops(self, train):
        return [transforms.DecodeText()]


def test_bad_records_are_replaced_and_counted(monkeypatch):
    registry = Registry('dataset', {})
    registry.register('flaky')(_Flaky)
    monkeypatch.setattr(sources, 'DATASETS', registry)
    spec = {'image': jax.ShapeDtypeStruct((8, 8, 1), np.float32),
            'text': jax.ShapeDtypeStruct((8,), np.int32)}
    it = pipeline.batches('flaky', data_dir=None, split='train', spec=spec,
                          tokenizer=ClipTokenizer(), batch_size=10, seed=0, num_epochs=1,
                          shuffle=False, image_options=images.ImageOptions(size=8, channels=1))
    batch = next(it)
    assert batch['_skipped'].tolist() == [0, 0, 0, 1, 0, 0, 0, 1, 0, 0]
    assert 'position 3' in batch['_bad'][3] and 'position 7' in batch['_bad'][7]
    clip = ClipTokenizer()
    assert [clip.decode(t) for t in batch['text']][3:5] == ['record 4', 'record 4']


class _FlakyStream(_Flaky):
    """The same records, streamed."""
    random_access = False


class _Broken(_Flaky):
    """More undecodable records in a row than a row may replace."""

    def source(self, data_dir, split):
        return [{'image': b'not an image', 'text': b'x'}] * (pipeline.MAX_REPLACEMENTS + 6)


class _BrokenStream(_Broken):
    random_access = False


@pytest.fixture
def flaky_datasets(monkeypatch):
    registry = Registry('dataset', {})
    for name, cls in [('flaky', _Flaky), ('flaky_stream', _FlakyStream), ('broken', _Broken),
                      ('broken_stream', _BrokenStream)]:
        registry.register(name)(cls)
    monkeypatch.setattr(sources, 'DATASETS', registry)
    return {'image': jax.ShapeDtypeStruct((8, 8, 1), np.float32),
            'text': jax.ShapeDtypeStruct((8,), np.int32)}


def test_a_streamed_read_replaces_and_counts_bad_records_as_a_random_access_one(flaky_datasets):
    read = dict(data_dir=None, split='train', spec=flaky_datasets, tokenizer=ClipTokenizer(),
                batch_size=4, seed=0, num_epochs=1, image_options=images.ImageOptions(size=8, channels=1))
    it = pipeline.batches('flaky_stream', **read)
    batches = [next(it), next(it)]    # records 0-4 (3 replaced by 4), 5-9 (7 replaced by 8)
    assert [b['_skipped'].tolist() for b in batches] == [[0, 0, 0, 1], [0, 0, 1, 0]]
    assert 'record 3' in batches[0]['_bad'][3] and 'record 7' in batches[1]['_bad'][2]
    clip = ClipTokenizer()
    assert [clip.decode(t) for t in batches[1]['text']] == ['record 5', 'record 6', 'record 8', 'record 9']


@pytest.mark.parametrize('name', ['broken', 'broken_stream'])
def test_a_run_of_bad_records_is_one_bad_data_line(flaky_datasets, name):
    from mmjax.errors import BadData
    it = pipeline.batches(name, data_dir=None, split='train', spec=flaky_datasets,
                          tokenizer=ClipTokenizer(), batch_size=2, seed=0, num_epochs=1, shuffle=False,
                          image_options=images.ImageOptions(size=8, channels=1))
    with pytest.raises(BadData) as caught:
        next(it)
    message = str(caught.value)
    assert f'{pipeline.MAX_REPLACEMENTS} records in a row of dataset {name!r} are bad' in message
    assert 'mmjax data build' in message and '\n' not in message
    evaluation = pipeline.eval_batches(name, data_dir=None, split='test', spec=flaky_datasets,
                                       tokenizer=ClipTokenizer(), batch_size=100,
                                       image_options=images.ImageOptions(size=8, channels=1))
    with pytest.raises(BadData, match='records in a row'):
        next(evaluation)


@pytest.mark.parametrize('process_count', [1, 2])
def test_evaluation_leaves_bad_records_out_and_counts_them(flaky_datasets, caplog, process_count):
    kept = {}
    for p in range(process_count):
        for batch, valid in pipeline.eval_batches(
                'flaky', data_dir=None, split='test', spec=flaky_datasets, tokenizer=ClipTokenizer(),
                batch_size=4, process_index=p, process_count=process_count,
                image_options=images.ImageOptions(size=8, channels=1)):
            kept.update({int(i): t for i, t, v in zip(batch['_index'], batch['text'], valid) if v})
    assert sorted(kept) == [0, 1, 2, 4, 5, 6, 8, 9]      # 3 and 7 are not scored
    assert [ClipTokenizer().decode(kept[i]) for i in (2, 4)] == ['record 2', 'record 4']
    assert 'failed to decode and were left out of the evaluation' in caplog.text


def test_class_names_of_another_length_than_the_labels_are_refused(tmp_path):
    from mmjax.data import build
    for label in ('a', 'b'):
        (tmp_path / 'photos' / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8), 50 * i, np.uint8)).save(tmp_path / 'photos' / label / f'{i}.png')
    summary = build.build(str(tmp_path / 'photos'), 'two', str(tmp_path / 'data'), val_fraction=0,
                          workers=1)
    info_file = f"{summary['path']}/mmjax_build.json"
    info = json.loads(open(info_file).read())
    assert sources.get('two', str(tmp_path / 'data')).class_names == ('a', 'b')
    info['class_names'] = ['apple', 'banana', 'cherry']
    open(info_file, 'w').write(json.dumps(info))
    with pytest.raises(ConfigError, match=r"'class_names' holds 3 names, but the dataset's labels have 2"):
        sources.get('two', str(tmp_path / 'data'))


def test_mlm_packing_fills_rows_with_whole_documents(data_dir):
    wordpiece = WordPieceTokenizer.train(prose_texts(data_dir, 'test'), vocab_size=1000)
    spec = {'text': jax.ShapeDtypeStruct((64,), np.int32)}
    packed, _ = _global('prose', data_dir, 1, 3, batch_size=8, spec=spec, tokenizer=wordpiece,
                        pack=True)
    rows = np.concatenate([b['text'] for b in packed])
    assert rows.shape == (24, 64) and (rows[:, 0] == wordpiece.cls_id).all()
    assert not (rows == wordpiece.pad_id).any()              # no padding anywhere
    # Without the [CLS] column a packing window's rows (8 here: one batch) are documents,
    # each ended by [SEP], from the window's first token on: every complete document is one
    # of the split's texts, tokenised (tests/test_packing.py checks which ones).
    known = {tuple(ids) for ids in wordpiece.ids(list(sources.get('prose').texts(data_dir, 'train')))}
    for window in rows[:, 1:].reshape(3, -1).tolist():
        ends = [-1] + [i for i, t in enumerate(window) if t == wordpiece.sep_id]
        documents = [tuple(window[a + 1:b]) for a, b in zip(ends, ends[1:])]
        assert len(documents) >= 3 and all(d in known for d in documents)
        assert len(set(documents)) == len(documents)
    two, _ = _global('prose', data_dir, 2, 3, batch_size=8, spec=spec, tokenizer=wordpiece,
                     pack=True)
    _assert_equal(packed, two)
    in_a_worker, _ = _global('prose', data_dir, 1, 3, batch_size=8, spec=spec,
                             tokenizer=wordpiece, pack=True, worker_count=1)
    _assert_equal(packed, in_a_worker)


def test_random_crop_box_is_inside_and_sized():
    rng = np.random.default_rng(0)
    for _ in range(200):
        w, h = rng.integers(20, 400, size=2)
        left, top, right, bottom = images.random_crop_box(w, h, rng, (0.5, 1.0), (3 / 4, 4 / 3))
        assert 0 <= left < right <= w and 0 <= top < bottom <= h
        area = (right - left) * (bottom - top) / (w * h)
        ratio = (right - left) / (bottom - top)
        fallback = area > 0.99 or (left, top) == ((w - (right - left)) // 2, (h - (bottom - top)) // 2)
        assert fallback or (0.5 - 0.02 <= area <= 1.0 and 3 / 4 - 0.05 <= ratio <= 4 / 3 + 0.05)


def _photo(width, height):
    """A smooth RGB picture (gradients), as a PIL image."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([255 * x / width, 255 * y / height, 128 + 100 * np.sin(x / 17.0)], axis=-1)
    return Image.fromarray(rgb.round().astype(np.uint8))


def test_eval_image_is_resize_then_centre_crop_like_pillow():
    photo = _photo(300, 200)
    png = io.BytesIO()
    photo.save(png, format='PNG')
    out = images.EvalImage(images.ImageOptions(size=64)).map({'image': png.getvalue()})['image']
    reference = np.asarray(photo.crop((50, 0, 250, 200)).resize((64, 64), Image.BICUBIC))
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - reference).max() <= 1


def test_jpeg_reduced_decoding_is_close_to_full_decoding():
    photo = _photo(1600, 1200)
    jpeg = io.BytesIO()
    photo.save(jpeg, format='JPEG', quality=92)
    options = images.ImageOptions(size=64)
    fast = images.EvalImage(options).map({'image': jpeg.getvalue()})['image']
    full = np.asarray(Image.open(io.BytesIO(jpeg.getvalue())).convert('RGB')
                      .crop((200, 0, 1400, 1200)).resize((64, 64), Image.BICUBIC))
    assert np.abs(fast.astype(int) - full).mean() < 3


def test_transparent_and_grey_images_become_the_configured_channels():
    rgba = Image.new('RGBA', (10, 10), (0, 0, 0, 0))   # fully transparent: white
    png = io.BytesIO()
    rgba.save(png, format='PNG')
    out = images.EvalImage(images.ImageOptions(size=10)).map({'image': png.getvalue()})['image']
    assert (out == 255).all() and out.shape == (10, 10, 3)
    grey = images.EvalImage(images.ImageOptions(size=10, channels=1)).map(
        {'image': np.asarray(_photo(10, 10))})['image']
    assert grey.shape == (10, 10, 1)


def test_undecodable_bytes_are_a_bad_image():
    with pytest.raises(images.BadImage):
        images.EvalImage(images.ImageOptions(size=8)).map({'image': b'GIF89a broken'})
    with pytest.raises(images.BadImage):
        images.EvalImage(images.ImageOptions(size=8)).map({'image': b''})


def test_a_dataset_not_built_names_the_build_command(tmp_path):
    with pytest.raises(sources.DatasetMissing, match='mmjax data build SOURCE --name my_photos'):
        sources.get('my_photos', str(tmp_path))


def test_a_prepared_tfds_folder_is_a_dataset_by_its_name(data_dir):
    """Any tfds dataset prepared as ArrayRecord in the data dir (here the folder tfds wrote
    for the built-in play genres) is named directly: features, class names and splits come
    from its dataset_info."""
    folder = sources.get('mmjax_play_genres', data_dir)
    assert isinstance(folder, sources.TfdsFolder)
    assert folder.class_names == sources.get('play_genres').class_names
    assert set(folder.features) == {'text', 'label'} and set(folder.splits) == {'train', 'test'}
    spec = {'text': jax.ShapeDtypeStruct((16,), np.int32), 'label': jax.ShapeDtypeStruct((), np.int32)}
    batch, = _global('mmjax_play_genres', data_dir, 1, 1, spec=spec)[0]
    assert batch['text'].shape == (24, 16) and 0 <= batch['label'].min() <= batch['label'].max() < 6
    with pytest.raises(ConfigError, match="no split 'validation'; it has"):
        folder.source(data_dir, 'validation')


class _Batches:
    """Batches of 10 rows with `bad` skipped records each, and a position."""

    def __init__(self, bad):
        self.bad, self.read = bad, 0

    def __next__(self):
        self.read += 1
        skipped = np.zeros(10, np.int32)
        skipped[:self.bad] = 1
        return {'x': np.arange(10, dtype=np.float32), '_skipped': skipped,
                '_bad': np.array([f'row {i} bad' if s else '' for i, s in enumerate(skipped)])}

    def get_state(self):
        return str(self.read).encode()


def test_feed_reports_skips_and_stops_past_the_allowed_fraction():
    from mmjax import sharding
    from mmjax.config import defaults
    from mmjax.train import BadData
    from mmjax.train.feed import Feed
    mesh = sharding.make_mesh(defaults().mesh, devices=jax.devices()[:1])
    feed = Feed(_Batches(bad=0), mesh, max_bad_fraction=0.05)
    batch, state = feed.next()
    assert state == b'1' and np.asarray(batch['x']).tolist() == list(range(10))
    assert set(batch) == {'x'}                                   # bookkeeping popped
    stats = feed.stats()
    assert stats['data/skipped'] == 0 and 0 <= stats['train/data_wait_frac'] <= 1
    feed.close()
    feed = Feed(_Batches(bad=1), mesh, max_bad_fraction=0.05)   # 1 in 11 read: 9% > 5%
    for _ in range(12):
        feed.next()
    with pytest.raises(BadData, match=r'12 of 132 records .* row 0 bad'):
        feed.stats()
    feed.close()
