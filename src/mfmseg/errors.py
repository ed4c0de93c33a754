"""The one exception type that the command line turns into a one-line message and a non-zero exit.

Raise `UserError` for anything the user can fix (bad path, bad config key, wrong checkpoint, corrupt image):
the CLI prints `error: <message>` without a traceback. Bugs stay ordinary exceptions so that they keep theirs.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input: message says what, where, and how to fix it."""
