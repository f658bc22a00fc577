"""User-facing errors.

Anything a user can cause by bad input (a missing file, an unknown config key, a corrupt
checkpoint) raises `UserError`; the CLI prints its message as one line on stderr and exits
non-zero instead of showing a traceback.
"""


class UserError(Exception):
    """An error caused by the user's input; the message must say what to fix."""
