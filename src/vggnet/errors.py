"""Exceptions for user-facing errors.

Every error a user can cause (a bad flag, a bad file, a wrong checkpoint) is one
of these, with a message that names the flag or file, what was wrong and what
would be right. The `vgg` command prints the message without a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user asked for: a flag, a setting, a name."""


class DataError(UserError):
    """A dataset or image file that cannot be used; the message names the file."""


class CheckpointError(UserError):
    """A checkpoint or weights file that cannot be used; the message names the file."""
