"""mmjax: CLIP-style dual encoders and BERT-style MLM pretraining in JAX/Flax, at pod scale."""

__version__ = "0.1.0"


def load(path, step=None, data_dir="~/.cache/mmjax", batch_size=64):
    """mmjax.api.load (imported on first use, so `import mmjax` stays light)."""
    from mmjax import api
    return api.load(path, step, data_dir, batch_size)
