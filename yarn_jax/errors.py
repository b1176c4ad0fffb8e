"""The one error path of every command line: user errors are one line and exit status 2.

A ``UserError`` is bad input the user can fix (a path, a spec, a config field, a file of the
wrong kind); its message names the field or path and what is allowed. Every CLI (train,
evaluate, data, convert) runs its work through ``run_cli``, which prints ``error: MESSAGE`` and
returns 2 for a ``UserError`` or an ``OSError`` (an unreadable path, a full disk), and lets
anything else (a bug) raise with its traceback.
"""

from __future__ import annotations

import sys
from typing import Callable


class UserError(ValueError):
    """Bad input from the user; the message says which field or path and what is allowed."""


def run_cli(work: Callable[[], object]) -> int:
    """Runs ``work()``; 0 when it returns, 2 (with one line on stderr) on a UserError or OSError."""
    try:
        work()
    except (UserError, OSError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
        return 2
    return 0


def one_line(error: Exception) -> str:
    """The error's message on one line ('PATH: reason' for an OSError, whose str repeats the errno)."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return " ".join(str(error).split())
