"""Atomic file writes: every file the project writes appears whole or not at all.

:func:`atomic_path` hands a writer a temporary path in the destination's folder
(``.<name>.<random>.partial``, hidden, so no glob of ``*.<ext>`` picks it up) and renames it onto
the destination with :func:`os.replace` only when the writer returns. An exception, Ctrl-C
(``KeyboardInterrupt``) or ``SystemExit`` removes the temporary file, so an interrupted write
leaves the earlier file at the destination untouched and no half file beside it. A process
killed outright (``kill -9``, power loss) may leave a ``.partial`` file, never a truncated
destination. :func:`atomic_folder` does the same for a folder of files (frames): it is filled under
a hidden name and takes the destination's place whole, so an earlier folder's files never mix with
the new ones and a failed export leaves no half-filled folder.

>>> with atomic_path("out/run.json") as temporary:
...     temporary.write_text(text, encoding="utf-8")
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

PARTIAL_MARK = ".partial"


def partial_path(path: Path, suffix: str = "") -> Path:
    """The temporary name :func:`atomic_path` writes ``path`` under (same folder, hidden, random)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{PARTIAL_MARK}{suffix}")


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path to write; on success rename it onto ``path`` (parents are created).

    Args:
        path: the destination file; replaced atomically if it exists.
        suffix: appended to the temporary name, for writers that pick a format from the file
            extension (ffmpeg: ``suffix=".mp4"``).

    The writer must create and close the temporary file inside the ``with`` block. If it
    writes nothing there, the destination is left as it was and a :class:`FileNotFoundError`
    says so.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = partial_path(path, suffix)
    try:
        yield temporary
        if not temporary.exists():
            raise FileNotFoundError(f"Nothing was written for {path} (no {temporary.name}); the file is unchanged.")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@contextmanager
def atomic_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a new empty temporary folder to fill; on success it takes ``path``'s place whole.

    An earlier folder at ``path`` is replaced, none of its files kept: it is renamed aside
    (``.<name>.<random>.partial.old``), the new folder renamed onto ``path``, then the old one removed.
    An exception (or Ctrl-C) removes the temporary folder and leaves ``path`` as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = partial_path(path)
    temporary.mkdir()
    try:
        yield temporary
        if path.exists():
            aside = partial_path(path, ".old")
            os.replace(path, aside)
            try:
                os.replace(temporary, path)
            except BaseException:
                os.replace(aside, path)  # the earlier folder back in its place
                raise
            if aside.is_dir():
                shutil.rmtree(aside)
            else:
                aside.unlink()
        else:
            os.replace(temporary, path)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def check_output_folder(folder: str | os.PathLike[str], names: Iterable[str], *, overwrite: bool = False) -> Path:
    """Before a run writes ``names`` into ``folder``: refuse when the folder already holds any of
    them (an earlier run's results) unless ``overwrite``, then create the folder and prove it
    writable, so a bad ``--out`` fails before any model loads instead of after the generation.

    Raises:
        FileExistsError: earlier results are there and ``overwrite`` is False.
        OSError: the folder cannot be created or written (read-only, a file in the way, ...).
    """
    folder = Path(folder)
    existing = [name for name in names if (folder / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{folder} already holds {', '.join(existing)} from an earlier run; pass --overwrite "
                              "to replace them (each file is replaced whole, when its new version is complete), "
                              "or choose another --out.")
    folder.mkdir(parents=True, exist_ok=True)
    probe = partial_path(folder / "write-test")
    probe.write_bytes(b"")
    probe.unlink()
    return folder
