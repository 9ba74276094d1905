"""Errors that are the user's to fix (bad flag, config key, missing file).

The CLI prints them as one line and exits with status 2, without a traceback.
"""


class UserError(Exception):
    """A mistake in user input: the message names the flag, key or file."""
