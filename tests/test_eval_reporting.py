"""Every evaluator says what it measured: `n` (the examples of its split it scored) and the
split (in `n_<split>`) come with its metrics, and a split under `min_examples` is a warning
that names its size and the dataset's other splits with theirs."""

import jax
import numpy as np
import pytest

from mmjax import eval as evaluators
from mmjax.data import transforms
from mmjax.data.sources import DATASETS, Dataset
from mmjax.data.tokenizers import WORDPIECE_SPECIALS, WordPieceTokenizer
from mmjax.train.setup import setup
from tiny_configs import tiny_config

SPLITS = {"train": 40, "validation": 7, "test": 23}   # 23, 7: not multiples of the batch
NAMES = ("zero", "one", "two")
WORDS = ("a", "photo", "of", "the", "digit", *NAMES)


@DATASETS.register("toy_sized")
class Sized(Dataset):
    """Random 8x8 images labelled 0-2, captioned from their labels, in splits of SPLITS' sizes."""
    features = ("image", "text", "label")
    class_names = NAMES
    templates = ("a photo of the digit {}",)
    splits = SPLITS

    def source(self, data_dir, split):
        rng = np.random.default_rng(list(SPLITS).index(split))
        return [{"image": rng.integers(0, 256, (8, 8, 1)).astype(np.uint8), "label": i % 3}
                for i in range(SPLITS[split])]

    def example_ops(self, train):
        return [transforms.CaptionFromLabel(self.class_names, self.templates, random=train)]


TOKENIZER = WordPieceTokenizer({t: i for i, t in enumerate(WORDPIECE_SPECIALS + WORDS)})
ENTRIES = {   # evaluator type -> (task, options)
    "zeroshot": ("clip", {}),
    "retrieval": ("clip", {}),
    "linear_probe": ("clip", dict(shots=(1,), l2_grid=(1.0,), max_iter=5, seeds=1)),
    "classify": ("classify", {}),
    "mlm": ("mlm", {}),
}


def _evaluator(kind, split="test", **options):
    """(evaluator of `kind` over toy_sized's `split`, random params) on one device."""
    task, defaults = ENTRIES[kind]
    config = tiny_config(task)
    if task == "classify":
        config.model.classify.update(tower="image", num_classes=3)
    run = setup(config, tokenizer=TOKENIZER, devices=jax.devices()[:1])
    spec = dict(type=kind, dataset="toy_sized", split=split, every=1, batch_size=10, seed=0,
                **defaults, **options)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: (0.2 * rng.standard_normal(a.shape)).astype(a.dtype),
                          run.abstract_state.params)
    return evaluators.EVALUATORS.get(kind)(run, spec, None), params


@pytest.mark.parametrize("kind", list(ENTRIES))
def test_every_evaluator_reports_n_and_its_split_and_warns_once_on_a_small_one(kind, capsys):
    evaluator, params = _evaluator(kind)
    metrics = evaluator.run(params)
    assert metrics["n"] == metrics["n_test"] == SPLITS["test"]
    assert all(isinstance(v, (int, float)) for v in metrics.values())   # any writer takes them
    read = {k for k in metrics if k.startswith("n_")}
    assert read == ({"n_test", "n_train"} if kind == "linear_probe" else {"n_test"})
    if kind == "linear_probe":
        assert metrics["n_train"] == SPLITS["train"]
    err = capsys.readouterr().err
    assert f"evaluator {kind}:toy_sized scored 23 examples of split 'test'" in err
    assert "fewer than min_examples=100" in err
    assert "other splits: train (40), validation (7)" in err
    assert evaluator.run(params)["n"] == 23 and "warning" not in capsys.readouterr().err


def test_the_issue_case_a_three_image_validation_split_names_the_others(capsys):
    """`--evals zeroshot:my_photos` scored a 3-image validation split and named neither: now
    the metrics carry n_validation and the warning lists the train and test splits."""
    evaluator, params = _evaluator("zeroshot", split="validation")
    metrics = evaluator.run(params)
    assert metrics["n"] == metrics["n_validation"] == 7 and "n_test" not in metrics
    err = capsys.readouterr().err
    assert "scored 7 examples of split 'validation'" in err
    assert "other splits: train (40), test (23)" in err


def test_min_examples_is_an_entry_option(capsys):
    evaluator, params = _evaluator("zeroshot", min_examples=20)
    assert evaluator.run(params)["n"] == 23
    assert "warning" not in capsys.readouterr().err
    evaluator, params = _evaluator("zeroshot", min_examples=24)
    evaluator.run(params)
    assert "fewer than min_examples=24" in capsys.readouterr().err
    with pytest.raises(evaluators.ConfigError, match="min_examples=-1"):
        _evaluator("zeroshot", min_examples=-1)
