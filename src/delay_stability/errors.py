"""Errors that are the user's to fix (bad flag, config key, missing file).

The CLI prints them as one line and exits with status 2, without a traceback.
"""


class UserError(Exception):
    """A mistake in user input: the message names the flag, key or file."""


class TimeLimitReached(Exception):
    """A job stopped at its time limit (``DELAY_STABILITY_JOB_SECONDS``) after saving a checkpoint:
    the next attempt resumes from it. The CLI exits with EXIT_STATUS (75, EX_TEMPFAIL)."""

    EXIT_STATUS = 75
