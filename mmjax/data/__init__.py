"""Data layer: tokenizers, tfds builders of the built-in datasets, grain input pipelines."""
