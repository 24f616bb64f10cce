"""Folder locks and log files that never follow a symbolic link.

A run or sweep folder may come from someone else. Opening ``RUN/.lock`` with a plain ``open(.., "w")``
would truncate whatever a planted symlink points at; here every such file is opened with
``O_NOFOLLOW`` (a symlink is refused by the kernel, not by a check that could race) and must be
a regular file.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from typing import Iterator


class FolderInUse(RuntimeError):
    """Another process holds the folder's lock."""


def open_nofollow(path: str, flags: int, mode: int = 0o666) -> int:
    """``os.open`` that refuses a symlink or a non-regular file at ``path``; returns the descriptor."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise PermissionError(f"{path} is a symbolic link: nslab does not write through links "
                                  f"(remove it, or use another folder)") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise PermissionError(f"{path} is not a regular file: nslab writes its lock and log files only "
                              f"as plain files (remove it, or use another folder)")
    return fd


def open_append(path: str):
    """A line-buffered text file opened for appending, refusing symlinks (for logs)."""
    fd = open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    return os.fdopen(fd, "a", buffering=1)


@contextlib.contextmanager
def exclusive(folder: str, name: str = ".lock", what: str = "run folder") -> Iterator[int]:
    """Hold an exclusive ``flock`` on ``folder/name`` for the block, or raise :class:`FolderInUse` at once.

    The lock file is created if missing and never truncated; the lock goes with the process.
    """
    os.makedirs(folder, exist_ok=True)
    fd = open_nofollow(os.path.join(folder, name), os.O_WRONLY | os.O_CREAT)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderInUse(f"{what} {folder!r} is in use by another process") from None
        yield fd
    finally:
        os.close(fd)
