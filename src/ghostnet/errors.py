"""The one exception type for mistakes a user can fix (bad argument, file, key or shape).

The CLI prints these as a single line; library callers can catch them as ``ValueError``.
"""


class GhostnetError(ValueError):
    """A user-fixable problem; the message says what is wrong and how to fix it."""
