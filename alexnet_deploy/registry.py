"""An ordered registry of classes named by "module:Class", imported on first use.

The order is the order of the entries (what `--help`, reports and the post-export check follow),
never the order in which modules happen to be imported; listing the names imports nothing, so the
CLI's choices cost no backend import, and a backend module may import the interface module that
holds its registry without a cycle."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any


class Registry(Mapping[str, Any]):
    def __init__(self, kind: str, entries: tuple[tuple[str, str], ...]) -> None:
        names = [name for name, _ in entries]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"{kind} {', '.join(dupes)} registered twice")
        self.kind = kind
        self._where = dict(entries)
        self._loaded: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._loaded:
            module, attr = self._where[name].split(":")  # KeyError for an unknown name
            cls = getattr(importlib.import_module(module), attr)
            if getattr(cls, "name", name) != name:
                raise ValueError(f"{self.kind} {name!r} points at {cls.__name__}, named {cls.name!r}")
            self._loaded[name] = cls
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)
