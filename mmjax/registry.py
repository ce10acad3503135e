"""Name -> plug-in tables (tasks, datasets, evaluators), with built-ins imported on first use.

A plug-in registers itself when its module is imported (`@TASKS.register("clip")`). A config
may also name one by import path, `"my_package.my_module:MyTask"`, so a user's own module
plugs in without editing mmjax.
"""

import importlib


class UnknownNameError(KeyError):
    """A name that no registered plug-in has; the message lists the valid ones."""

    def __str__(self):
        return self.args[0]


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
            module, _, attr = name.partition(":")
            try:
                return getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as e:
                raise UnknownNameError(f"{self.kind} {name!r} cannot be imported ({e})") from e
        raise UnknownNameError(f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}, "
                               f"or 'package.module:Name' of your own")
