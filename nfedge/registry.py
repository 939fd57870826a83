"""Name -> factory registries (base models, generators, fault models, targets).

Adding an entry is one decorated function; an unknown name gives an error that lists the known ones.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from nfedge.errors import NfedgeError

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, F] = {}
        self._display: dict[str, str] = {}  # lower-case key -> name as registered (ConvL, resnet18)

    def register(self, name: str) -> Callable[[F], F]:
        def deco(fn: F) -> F:
            key = name.lower()
            if key in self._entries:
                raise ValueError(f"{self.what} {name!r} registered twice")
            self._entries[key] = fn
            self._display[key] = name
            return fn
        return deco

    def get(self, name: str) -> F:
        try:
            return self._entries[name.lower()]
        except KeyError:
            raise NfedgeError(f"unknown {self.what} {name!r}; known: {', '.join(self.names())}") from None

    def canonical(self, name: str) -> str:
        self.get(name)
        return self._display[name.lower()]

    def names(self) -> list[str]:
        return sorted(self._display.values(), key=str.lower)

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._entries
