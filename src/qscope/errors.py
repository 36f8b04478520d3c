"""One exception type for problems the user can fix (bad file, bad layer, empty text).

The CLI prints its message as a single line and exits non-zero; library callers can catch it.
Anything else escaping is a bug in qscope, not the user's input.
"""


class QScopeError(Exception):
    """A user-facing error: the message says which input, which field, what was expected."""
