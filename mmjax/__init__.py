"""mmjax: CLIP-style dual encoders and BERT-style MLM pretraining in JAX/Flax, at pod scale."""

__version__ = "0.1.0"
