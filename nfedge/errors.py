"""The one error type users see: the CLI prints its message on one line and exits non-zero.

An OSError (disk full, read-only file system, a file that vanished) is not a bug either: the CLI turns it into
one line too, worded by `os_error_message`.
"""

from __future__ import annotations

import errno
import os


class NfedgeError(Exception):
    """A user-facing error (bad input, missing tool, failed check). The message is one line."""


def _name(f: object) -> str | None:
    if isinstance(f, (str, bytes)):
        return os.fsdecode(f)
    return None  # None, or a file descriptor: no path to show


def os_error_message(e: OSError, doing: str | None = None) -> str:
    """One line for an OSError: 'PATH: No space left on device (errno 28 ENOSPC)'. Without a path, `doing` (the
    command that ran into it) stands in its place; an OSError without an errno (a library's own message) keeps
    its message after its type's name."""
    where = _name(e.filename)
    if where is not None and _name(e.filename2) is not None:
        where = f"{where} -> {_name(e.filename2)}"
    if e.errno is None:
        what = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    else:
        code = errno.errorcode.get(e.errno, "")
        what = f"{e.strerror or os.strerror(e.errno)} (errno {e.errno}{' ' + code if code else ''})"
    where = where or doing
    msg = f"{where}: {what}" if where else what
    return " ".join(msg.splitlines())  # a file name may hold a newline: the message stays one line
