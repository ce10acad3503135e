"""Data layer: tokenizers, tfds builders of the built-in datasets, grain input pipelines."""

# Where datasets are built and read when no --data_dir is given (here, so the CLI names it
# without importing tensorflow_datasets).
DEFAULT_DATA_DIR = '~/.cache/mmjax'
