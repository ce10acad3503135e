"""The errors mmjax raises for users to act on: each message says what is wrong and how to
fix it, and the CLI prints it as one `mmjax: error:` line.

They all live here, in a module that imports nothing of mmjax, so any module (the CLI
above all, which names them without importing jax) can raise or catch them without an
import cycle. The modules that raise them re-export them (`mmjax.config.ConfigError` is
this `ConfigError`).
"""


# Configs and plug-in names.

class ConfigError(ValueError):
    """A config file or override is wrong; the message says which key and how to fix it."""


class UnknownNameError(KeyError):
    """A name that no registered plug-in has; the message lists the valid ones."""

    def __str__(self):
        return self.args[0]


class DatasetMissing(ConfigError):
    """A dataset name that is neither registered nor built in the data dir."""


class InitError(ConfigError):
    """`config.init` names parameters that cannot be loaded; the message names them."""


# Devices.

class MeshError(ValueError):
    """The mesh in the config does not fit the devices."""


class TopologyError(ValueError):
    """An unknown TPU name, or libtpu is not installed."""


# Files and data.

class MissingFilesystem(ImportError):
    """A gs:// path without gcsfs installed; the message says how to install it."""


class DataDirError(OSError):
    """The data directory cannot be created or written."""


class BuildError(ValueError):
    """A user error in `mmjax data build` (bad source, options or data dir); one line."""


class BadImage(ValueError):
    """An image record that cannot be decoded (truncated, not an image, empty)."""


class BadData(ValueError):
    """More training records failed to decode than `data.max_bad_fraction` allows."""


class VocabularyMismatch(DataDirError):
    """Processes of one job hold different tokenizer vocabularies; the message names them."""


# Training runs.

class CheckpointError(RuntimeError):
    """WORKDIR's checkpoints cannot be used by this run; the message says why and what to do."""


class CheckpointMismatchError(CheckpointError):
    """WORKDIR's newest checkpoint was written by a different model config."""


class TrainingDiverged(RuntimeError):
    """Too many steps in a row had non-finite gradients; the checkpoints hold finite params."""
