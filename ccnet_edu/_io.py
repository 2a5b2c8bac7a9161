"""Atomic file writes: the one way this project writes a file a reader may already rely on.

A checkpoint, a CSV of measurements, an exported ONNX graph or a built library is written to a
temporary file in the same folder, flushed and ``fsync``-ed, and only then renamed over the
target with :func:`os.replace` (atomic on POSIX and Windows within one file system). A full disk,
a file-size limit, an exception or a killed process therefore leaves either the old file or the
new one, never half of either; the temporary file is removed on failure.
"""

from __future__ import annotations

import contextlib
import csv
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_csv",
    "atomic_save_figure",
    "atomic_write_text",
    "fsync_dir",
]


def fsync_dir(directory: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename is durable only once its folder is synced)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms without O_RDONLY folders (Windows): nothing to sync
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None
) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path`` atomically.

    Args:
        path: the file to (over)write. Its folder must exist.
        mode: ``"wb"`` (bytes) or ``"w"`` (text).
        encoding: for text mode; UTF-8 when not given.

    Yields:
        The open temporary file. Write to it; do not close it.

    Raises:
        IsADirectoryError: ``path`` names a folder.
        ValueError: ``path`` is a FIFO, socket or device: renaming a file over it would
            replace the special file itself (``/dev/null`` would become a regular file).
        OSError: the write, flush, fsync or rename failed (the old file is untouched).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"{target} is a directory, not a file")
    if target.exists() and not stat.S_ISREG(target.stat().st_mode):
        raise ValueError(
            f"{target} is not a regular file (a FIFO, socket or device); an atomic write "
            "replaces the file, so it writes regular files only"
        )
    directory = target.parent if str(target.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
    try:
        if mode == "w":
            handle = os.fdopen(fd, "w", encoding=encoding or "utf-8", newline="")
        else:
            handle = os.fdopen(fd, "wb")
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if target.exists():
            # keep the old file's permissions (mkstemp creates 0600)
            os.chmod(tmp, target.stat().st_mode & 0o7777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "w", encoding=encoding) as handle:
        handle.write(text)


def atomic_save_figure(figure: object, path: str | os.PathLike, **savefig: object) -> None:
    """``figure.savefig`` (matplotlib) into ``path`` atomically; the format is the suffix's."""
    image_format = Path(path).suffix.lstrip(".").lower() or "png"
    with atomic_write(path, "wb") as handle:
        figure.savefig(handle, format=image_format, **savefig)  # type: ignore[attr-defined]


def atomic_write_csv(
    path: str | os.PathLike, fieldnames: Sequence[str], rows: Iterable[Mapping[str, object]]
) -> None:
    """Write a header and ``rows`` (dicts keyed by ``fieldnames``) as CSV, atomically."""
    with atomic_write(path, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fieldnames))
        writer.writeheader()
        writer.writerows(rows)
