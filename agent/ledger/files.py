"""Private files and directories: what the agent and the collector create is theirs alone, whatever the umask.

A store holds the location history and the vehicle's keys, a collector holds
every car's copies. systemd's unit sets UMask=0077; anywhere else a umask of
022 would make them world-readable. So every directory is created 0700 and
every file 0600, explicitly (mode, then chmod: a umask can only take bits
away). SQLite gives a database's -wal and -shm files the database's mode, so
creating the database file first with `private_file` covers them.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

__all__ = ["DIR_MODE", "FILE_MODE", "private_dir", "private_file", "write_private", "repair_private", "open_private"]

DIR_MODE = 0o700
FILE_MODE = 0o600

log = logging.getLogger(__name__)


def private_dir(path: str | os.PathLike) -> Path:
    """`path` as a directory, it and every missing parent created 0700; an existing one is left as it is."""
    path = Path(path)
    missing = []
    walk = path
    while not walk.exists() and walk != walk.parent:
        missing.append(walk)
        walk = walk.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIR_MODE)
        except FileExistsError:  # a concurrent first run made it
            continue
        os.chmod(directory, DIR_MODE)
    return path


def private_file(path: str | os.PathLike) -> Path:
    """Create `path` empty with mode 0600 when it is missing (before SQLite opens it, or a lock file)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return path
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return path


def write_private(path: str | os.PathLike, data: bytes) -> None:
    """Replace `path` atomically with `data`, mode 0600, durable (file and directory fsync'd)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def open_private(path: str | os.PathLike, mode: str = "w", newline: str | None = None):
    """A text file the user asked an export into (records, captures), created 0600: it is the car's data.

    An existing file keeps its mode (its owner chose it) and is truncated.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    if "b" in mode:
        return os.fdopen(fd, mode)
    return os.fdopen(fd, mode, newline=newline, encoding="utf-8")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def repair_private(path: Path, what: str) -> None:
    """Make an existing directory (0700) or file (0600) that group or others can use private again, and say so.

    Used for keys/ (a directory others can write lets them swap the vehicle
    key) and the database files a umask of 022 once left readable. OSError
    (not ours to chmod) is the caller's to refuse.
    """
    st = os.stat(path)
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        want = DIR_MODE if stat.S_ISDIR(st.st_mode) else FILE_MODE
        os.chmod(path, want)
        log.warning("%s: %s was mode %04o (open to group/others); made it %04o", path, what, mode, want)
