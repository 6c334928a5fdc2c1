"""The one exception type the command-line layer turns into a one-line message."""


class WsinucleiError(Exception):
    """A user-facing error: bad input, missing metadata, nothing to do.

    The CLI prints ``str(error)`` on one line and exits non-zero; library callers can catch it.
    """
