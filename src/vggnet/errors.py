"""Exceptions for user-facing errors.

Every error a user can cause (a bad flag, a bad file, a wrong checkpoint) is one
of these, with a message that names the flag or file, what was wrong and what
would be right. The `vgg` command prints the message without a traceback.
"""

from __future__ import annotations

import re


class UserError(Exception):
    """A mistake in what the user asked for: a flag, a setting, a name."""


class DataError(UserError):
    """A dataset or image file that cannot be used; the message names the file."""


class CheckpointError(UserError):
    """A checkpoint or weights file that cannot be used; the message names the file."""


def plain_message(exc: BaseException) -> str:
    """The message of `exc` as the user should read it.

    An error raised in a DataLoader worker reaches the main process re-raised by
    torch with the worker's traceback in its text ("Caught DataError in DataLoader
    worker process 0. Original Traceback ..."); the user needs only the last
    line, the error's own message, whether the loader had workers or not.
    """
    text = str(exc)
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = next((line for line in reversed(text.splitlines()) if line.strip()), text)
        return re.sub(r"^[\w.]*(Error|Exception): ", "", last, count=1)  # "vggnet.errors.DataError: "
    return text
