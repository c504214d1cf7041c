"""The one top-level error handler of every command (``fourdnex ...`` and ``fourdnex-train ...``).

:func:`run_command` runs a command and turns what it raises into an exit code:

=================================================  ====  =========================================
raised                                             exit  printed (stderr)
=================================================  ====  =========================================
nothing                                            the command's own code
``KeyboardInterrupt`` (Ctrl-C)                     130   one line: interrupted, nothing half-written
expected failure: ``ValueError``,                  2     one line: ``PROG COMMAND: error: ...``
``OSError`` (missing file, read-only folder, full
disk, over-long name), ``RuntimeError`` (out of
memory, a kernel), ``ImportError``, ``MemoryError``
anything else (a bug)                              1     one line naming the bug; the traceback with
                                                          ``--verbose``
=================================================  ====  =========================================

Every file the project writes goes through :func:`fourdnex_core.atomic_write.atomic_path`, so an
interrupted command leaves earlier results whole and no half-written file behind.
"""

from __future__ import annotations

import errno
import sys
import traceback
from collections.abc import Callable

import torch

EXIT_ERROR = 2
EXIT_BUG = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C

EXPECTED = (ValueError, OSError, RuntimeError, ImportError, MemoryError)

_OS_HINTS = {
    getattr(errno, name): hint for name, hint in (
        ("EACCES", "choose a folder you can write to (or fix its permissions)"),
        ("EPERM", "choose a folder you can write to (or fix its permissions)"),
        ("EROFS", "the file system is read-only; choose another folder"),
        ("ENOSPC", "the disk is full; free some space or choose another folder"),
        ("EDQUOT", "the disk quota is exceeded; free some space or choose another folder"),
        ("ENAMETOOLONG", "the file name is too long for this file system; choose a shorter name"),
        ("EISDIR", "a folder has that name; give a file name"),
        ("ENOTDIR", "a part of the path is a file, not a folder; check the path"),
    ) if hasattr(errno, name)  # EROFS and EDQUOT are missing on Windows
}

_MEMORY_HINT = ("the job does not fit in memory: make it smaller (fewer --frames, a smaller --size) or use the "
                "memory options (--low-vram auto, --offload, --fp8, --blocks-to-swap)")


def describe(error: BaseException) -> str:
    """One line saying what went wrong and, for system errors, what to do."""
    if isinstance(error, torch.OutOfMemoryError | MemoryError):
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"out of memory ({first}); {_MEMORY_HINT}"
    if isinstance(error, OSError) and error.errno is not None and error.strerror:
        where = f": {error.filename}" if error.filename is not None else ""
        hint = _OS_HINTS.get(error.errno)
        return f"{error.strerror}{where}" + (f"; {hint}" if hint else "")
    return " ".join(str(error).split()) or type(error).__name__


def run_command(prog: str, command: str, handler: Callable[[], int | None], *, verbose: bool = False) -> int:
    """Run ``handler()`` and return the process exit code (see the module docstring)."""
    try:
        return int(handler() or 0)
    except KeyboardInterrupt:
        print(f"\n{prog} {command}: interrupted; files are written whole or not at all, so earlier results are "
              "intact and nothing is half-written.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except EXPECTED as error:
        if verbose:
            traceback.print_exc()
        print(f"{prog} {command}: error: {describe(error)}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as error:  # a bug: say so in one line, the traceback on request
        if verbose:
            traceback.print_exc()
        what = type(error).__name__ + (f": {describe(error)}" if str(error).strip() else "")
        print(f"{prog} {command}: unexpected error ({what}); this is a bug. "
              f"Run again with {prog} --verbose for the traceback and report it.", file=sys.stderr)
        return EXIT_BUG
