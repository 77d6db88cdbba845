"""One plug-in mechanism for every kind of model imagetext loads (encoders, captioners, ...).

A `Registry` maps the "backend" name written in a model folder's config.json to the class
that reads it. Built-in backends are listed by module path and imported only when a model of
theirs loads, so importing a registry imports no torch and makes no import circle; a class
registers itself with the `register(name)` decorator when its module is imported, which is
also how code outside imagetext adds a backend.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

from imagetext.errors import InvalidInputError

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    def __init__(self, kind: str, builtin: dict[str, str]):
        self.kind = kind  # what the error messages call it ("backend", "captioner backend")
        self.builtin = dict(builtin)  # backend name -> module that registers it
        self._classes: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: config.json {"backend": name} loads the class."""

        def decorator(cls: T) -> T:
            cls.backend = name
            self._classes[name] = cls
            return cls

        return decorator

    def names(self) -> list[str]:
        return sorted(set(self._classes) | set(self.builtin))

    def get(self, name: str) -> T:
        if name not in self._classes and name in self.builtin:
            importlib.import_module(self.builtin[name])
        if name not in self._classes:
            raise InvalidInputError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._classes[name]
