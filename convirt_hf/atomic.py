"""Writes that never leave half a file or half a folder behind: files are written aside and renamed into place, and
a finished folder is swapped in for the one it replaces.

A rename within one file system is atomic, so after a crash (a killed process, a full disk) the path holds either
the old content or the new, never a torn mix.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_text", "swap_in_folder"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """
    A temporary path beside `path` to write to; when the block ends without an error, it replaces `path` in one
    rename, and otherwise it is removed and `path` is left as it was.

    Example:

    ```python
    >>> with atomic_path("results.json") as temporary:
    ...     temporary.write_text("{}")
    ```
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.incomplete")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Writes `text` to `path` atomically (see [`atomic_path`])."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)
    return Path(path)


def swap_in_folder(staged: str | os.PathLike, final: str | os.PathLike, aside: str | os.PathLike | None = None,
                   sync: bool = False) -> None:
    """
    Moves the finished folder `staged` to `final`. A folder already at `final` is first renamed to `aside` (default:
    `.replaced-<name>` beside it) and deleted only once the new one is in place, so a crash leaves a complete folder:
    the new one, or the old one under its aside name. `sync` makes the rename durable (fsync of the parent folder)
    before the old folder is deleted.
    """
    staged, final = Path(staged), Path(final)
    aside = Path(aside) if aside is not None else final.with_name(f".replaced-{final.name}")
    shutil.rmtree(aside, ignore_errors=True)
    if final.exists():
        os.replace(final, aside)
    os.replace(staged, final)
    if sync:
        fsync_folder(final.parent)
    shutil.rmtree(aside, ignore_errors=True)


def fsync_folder(folder: str | os.PathLike) -> None:
    """Flushes a folder's entries (renames, new files) to disk, where the platform allows it."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a folder
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
