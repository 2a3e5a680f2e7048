"""The one exception type a user sees: it says what was wrong and what to do about it."""


class CandorError(Exception):
    """A problem with the user's input or environment that they can fix.

    The command line prints the message (no traceback) and exits non-zero; Python callers
    can catch it. The message names the file, key or value at fault and the fix.
    """

    exit_code = 2
