"""Config dataclasses: validated, versioned, JSON-serialisable (one per stage).

A stage config subclasses `StageConfig`, declares typed fields with defaults, and implements
`validate()` (raise NfedgeError on bad values). `to_dict()` adds the config's kind and version so a
result file says exactly what produced it; `config_hash()` keys stage caching.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from typing import Any, ClassVar, TypeVar

from nfedge.errors import NfedgeError

C = TypeVar("C", bound="StageConfig")


@dataclasses.dataclass(frozen=True)
class StageConfig:
    CONFIG_VERSION: ClassVar[int] = 1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:  # overridden by stages
        pass

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return {"kind": type(self).__name__, "version": self.CONFIG_VERSION, **d}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def config_hash(self) -> str:
        """sha256 of the canonical JSON (first 16 hex digits): equal configs, equal hashes."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any]) -> C:
        d = dict(d)
        kind = d.pop("kind", cls.__name__)
        version = d.pop("version", cls.CONFIG_VERSION)
        if kind != cls.__name__:
            raise NfedgeError(f"config is a {kind}, expected a {cls.__name__}")
        if version != cls.CONFIG_VERSION:
            raise NfedgeError(f"{cls.__name__} version {version} is not supported (this nfedge reads {cls.CONFIG_VERSION})")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise NfedgeError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
        hints = typing.get_type_hints(cls)
        return cls(**{k: _coerce(v, hints[k]) for k, v in d.items()})

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise NfedgeError(f"{cls.__name__}: not valid JSON ({e})") from None


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    return v


def _coerce(v: Any, hint: Any) -> Any:
    """JSON has lists, not tuples, and dicts for nested configs: rebuild what the field's type says."""
    if isinstance(hint, type) and issubclass(hint, StageConfig) and isinstance(v, dict):
        return hint.from_dict(v)
    origin = typing.get_origin(hint)
    if origin is tuple and isinstance(v, list):
        return tuple(v)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if v is not None and args and typing.get_origin(args[0]) is tuple and isinstance(v, list):
            return tuple(v)
    if hint is float and isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    return v


def require(cond: bool, message: str) -> None:
    """Validation helper for configs: raise a one-line NfedgeError unless `cond` holds."""
    if not cond:
        raise NfedgeError(message)
