"""The one place library code reports progress: tqdm bars and info lines on stderr.

Library functions take a `Progress` (default: the quiet-aware one below) instead of printing, so a
caller (CLI, tests, the pipeline) decides what the user sees. stdout stays free for --json output.
Bars are drawn only when stderr is a terminal: redrawn into a file or a pipe (a log, CI), every refresh
would be another line. Info lines go out either way.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Iterable, Iterator, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def stderr_is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


@dataclasses.dataclass(frozen=True)
class Progress:
    enabled: bool = True

    @property
    def bars(self) -> bool:
        return self.enabled and stderr_is_terminal()

    def bar(self, iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
        return iter(tqdm(iterable, desc=desc, total=total, unit=unit, disable=not self.bars,
                         file=sys.stderr, dynamic_ncols=True, leave=False))

    def manual(self, desc: str, total: int | None = None, unit: str = "it") -> tqdm:
        return tqdm(desc=desc, total=total, unit=unit, disable=not self.bars, file=sys.stderr,
                    dynamic_ncols=True, leave=False)

    def info(self, message: str) -> None:
        if self.enabled:
            tqdm.write(f"[nfedge] {message}", file=sys.stderr)


QUIET = Progress(enabled=False)
DEFAULT = Progress(enabled=True)
