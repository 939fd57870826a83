"""The one error type users see: the CLI prints its message on one line and exits non-zero."""


class NfedgeError(Exception):
    """A user-facing error (bad input, missing tool, failed check). The message is one line."""
