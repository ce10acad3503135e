"""Name -> plug-in tables (tasks, datasets, evaluators), with built-ins imported on first use.

A plug-in registers itself when its module is imported (`@TASKS.register("clip")`). A config
may also name one by import path, `"my_package.my_module:MyTask"`, so a user's own module
plugs in without editing mmjax.

The tables live here, not in the packages that fill them (mmjax.tasks, mmjax.data.sources,
mmjax.eval re-export them), and this module imports nothing of mmjax but its errors: the
config checks plug-in names against the tables, and the plug-ins read the config, so
neither side imports the other. A built-in is known by the module that registers it, so a
name is checked without importing that module (and jax with it).
"""

import importlib

from mmjax.errors import UnknownNameError


class Registry:
    """One kind of plug-in: `register(name)` decorates it, `get(name)` finds it."""

    def __init__(self, kind: str, builtins: dict[str, str]):
        self.kind = kind
        self._builtins = dict(builtins)   # name -> module that registers it
        self._entries = {}

    def register(self, name: str):
        def add(obj):
            self._entries[name] = obj
            return obj
        return add

    def names(self) -> list[str]:
        return sorted(set(self._builtins) | set(self._entries))

    def get(self, name: str):
        if name not in self._entries and name in self._builtins:
            importlib.import_module(self._builtins[name])
        if name in self._entries:
            return self._entries[name]
        if ":" in name:
            return self._import(name)
        raise self._unknown(name)

    def check(self, name: str) -> None:
        """Raises UnknownNameError unless `get(name)` would find it; a built-in's module is
        not imported (a 'module:Name' one is: that is the only way to know it is there)."""
        if name in self._entries or name in self._builtins:
            return
        if ":" in name:
            self._import(name)
            return
        raise self._unknown(name)

    def _import(self, name: str):
        module, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise UnknownNameError(f"{self.kind} {name!r} cannot be imported ({e})") from e

    def _unknown(self, name: str) -> UnknownNameError:
        return UnknownNameError(f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}, "
                                f"or 'package.module:Name' of your own")


TASKS = Registry("task", {"clip": "mmjax.tasks.clip", "mlm": "mmjax.tasks.mlm",
                          "clip+mlm": "mmjax.tasks.clip_mlm", "classify": "mmjax.tasks.classify",
                          "lm": "mmjax.tasks.lm", "mlm+nsp": "mmjax.tasks.mlm_nsp",
                          "rtd": "mmjax.tasks.rtd",
                          "clip+itm": "mmjax.tasks.itm", "clip+itm+mlm": "mmjax.tasks.itm",
                          "clip+caption": "mmjax.tasks.caption", "tag": "mmjax.tasks.tag"})
DATASETS = Registry("dataset", {name: "mmjax.data.sources"
                                for name in ("digit_captions", "prose", "play_genres")})
EVALUATORS = Registry("evaluator", {"zeroshot": "mmjax.eval.zeroshot",
                                    "retrieval": "mmjax.eval.retrieval",
                                    "mlm": "mmjax.eval.mlm",
                                    "lm": "mmjax.eval.lm",
                                    "rtd": "mmjax.eval.rtd",
                                    "samples": "mmjax.eval.samples",
                                    "classify": "mmjax.eval.classify",
                                    "linear_probe": "mmjax.eval.linear_probe",
                                    "nsp": "mmjax.eval.nsp",
                                    "itm": "mmjax.eval.itm",
                                    "caption": "mmjax.eval.caption",
                                    "tag": "mmjax.eval.tag"})
