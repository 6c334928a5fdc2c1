"""The one exception type the command-line layer turns into a one-line message."""


class WsinucleiError(Exception):
    """A user-facing error: bad input, missing metadata, nothing to do.

    The CLI prints ``str(error)`` on one line and exits non-zero; library callers can catch it.
    """


class NoTissue(WsinucleiError):
    """The slide or image holds no stained area to run on (all glass, or no tile with tissue where it was asked
    to run): callers that go over many images, such as ``train-types``, skip it; the CLI reports it as any other
    error."""
