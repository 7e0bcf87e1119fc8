"""The disk under gateway.db: how full it is, a full disk told apart from other errors, and room kept.

A full data partition is a degraded mode, not an exit (docs/uplink.md, "Disk budget and
eviction"). What the rest of the gateway uses from here:

- ``is_disk_full(error)``: the error means "no room" (SQLite's ``SQLITE_FULL`` "database or
  disk is full", no room for the WAL's shared-memory file, ``ENOSPC``/``EDQUOT`` from the
  OS, ``DiskFullError``), so the writer should roll back, keep what it holds, say so in
  health and retry later, rather than treat it as a bug.
- ``free_bytes(path)``: bytes an unprivileged writer can still use on the partition holding
  ``path``; ``has_room(path)`` tells a writer that waits that space is back.
- ``file_sizes(db_path)``: gateway.db and its WAL on disk, what the disk budget counts.
- The reserve: a file of a few MiB beside gateway.db (``gateway.db-reserve``) that the gateway
  holds while the partition has room and deletes when it fills, so that it can still open its
  file (WAL mode needs room for its shared-memory file), evict and checkpoint. It is made
  again when the partition has room.
- ``checkpoint(conn)`` and ``reclaim(conn)``: empty the WAL into the file and truncate it, and
  give the file's free pages back to the filesystem (``auto_vacuum=INCREMENTAL``), in bounded
  steps so neither the WAL nor the time taken grows with the amount freed.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import time
from pathlib import Path

__all__ = [
    "DiskFullError", "RESERVE_MAX", "checkpoint", "file_sizes", "free_bytes", "has_room", "hold_reserve",
    "is_disk_full", "partition_bytes", "release_reserve", "reclaim", "reserve_held", "reserve_path",
    "reserve_size",
]

log = logging.getLogger(__name__)

RESERVE_MIN = 256 * 1024
RESERVE_MAX = 4 * 1024 * 1024
RECLAIM_STEP_PAGES = 1024  # pages given back per transaction (4 MiB with 4 KiB pages), then a checkpoint
IOERR_NEARLY_FULL = 1024 * 1024  # an I/O error with less than this free is taken for a full disk

_SQLITE_FULL = 13
_SQLITE_IOERR = 10
_SQLITE_IOERR_SHMSIZE = 4874  # no room to grow the -shm file


class DiskFullError(Exception):
    """gateway.db could not be opened or migrated: its partition is full.

    ``path`` is the database, ``action`` what could not be done, ``free`` the bytes left."""

    def __init__(self, path: Path, action: str, free: int):
        self.path, self.action, self.free = Path(path), action, free
        super().__init__(
            f"{path}: no room on its partition to {action} ({free / 1e6:.1f} MB free): free space there "
            f"(old logs, core dumps, other programs' files); the gateway keeps trying and goes on when there is room"
        )


def _existing(path: Path) -> Path:
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    """Bytes free for an unprivileged writer on the partition that holds ``path`` (or would hold it)."""
    st = os.statvfs(_existing(path))
    return st.f_bavail * st.f_frsize


def partition_bytes(path: Path) -> int:
    """Size of the partition that holds ``path``."""
    st = os.statvfs(_existing(path))
    return st.f_blocks * st.f_frsize


def file_sizes(db_path: Path) -> tuple[int, int]:
    """(gateway.db, its WAL) in bytes on disk; a missing file is 0."""
    sizes = []
    for path in (Path(db_path), Path(f"{db_path}-wal")):
        try:
            sizes.append(path.stat().st_size)
        except FileNotFoundError:
            sizes.append(0)
    return sizes[0], sizes[1]


def is_disk_full(error: BaseException | None, path: Path | None = None) -> bool:
    """Whether ``error`` (or an error it was raised from) means the disk had no room.

    SQLite reports most of these as ``SQLITE_FULL``; when the WAL's shared-memory file cannot
    grow it says "disk I/O error" (``SQLITE_IOERR_SHMSIZE``). Given ``path``, any other SQLite
    I/O error counts too while its partition has less than 1 MB free.
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, DiskFullError):
            return True
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(error, sqlite3.Error):
            code = getattr(error, "sqlite_errorcode", None)
            if code is None:
                if "database or disk is full" in str(error):
                    return True
            elif code & 0xFF == _SQLITE_FULL or code == _SQLITE_IOERR_SHMSIZE:
                return True
            elif code & 0xFF == _SQLITE_IOERR and path is not None:
                try:
                    if free_bytes(path) < IOERR_NEARLY_FULL:
                        return True
                except OSError:
                    pass
        error = error.__cause__ or error.__context__
    return False


# --- the reserve --------------------------------------------------------------------------


def reserve_path(db_path: Path) -> Path:
    return Path(f"{db_path}-reserve")


def reserve_size(db_path: Path) -> int:
    """A 32nd of the partition, between 256 KiB and 4 MiB (in 4 KiB blocks)."""
    size = min(RESERVE_MAX, max(RESERVE_MIN, partition_bytes(db_path) // 32))
    return size - size % 4096


def reserve_held(db_path: Path) -> bool:
    try:
        return reserve_path(db_path).stat().st_size >= reserve_size(db_path)
    except FileNotFoundError:
        return False


def hold_reserve(db_path: Path) -> bool:
    """Make the reserve file if it is missing; False when there is no room for it."""
    if reserve_held(db_path):
        return True
    path, size = reserve_path(db_path), reserve_size(db_path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            try:
                os.posix_fallocate(fd, 0, size)  # blocks really taken, not a sparse file
            except OSError as error:
                if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                block = b"\0" * 65536
                os.lseek(fd, 0, os.SEEK_SET)
                for _ in range(0, size, len(block)):
                    os.write(fd, block)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as error:
        path.unlink(missing_ok=True)
        if is_disk_full(error):
            return False
        raise
    return True


def release_reserve(db_path: Path) -> bool:
    """Delete the reserve file; True when there was one to delete."""
    try:
        reserve_path(db_path).unlink()
    except FileNotFoundError:
        return False
    return True


def has_room(db_path: Path) -> bool:
    """Whether the partition has room again: at least three reserves' worth free."""
    return free_bytes(db_path) >= 3 * reserve_size(db_path)


# --- giving space back ----------------------------------------------------------------------


def checkpoint(conn: sqlite3.Connection, wait: float = 2.0) -> bool:
    """Copy the WAL into the file and truncate the WAL to zero bytes; False if a reader held it.

    Waits at most ``wait`` seconds for other connections' reads to finish (the connection's
    own busy timeout is put back afterwards)."""
    previous = conn.execute("PRAGMA busy_timeout").fetchone()[0]
    conn.execute(f"PRAGMA busy_timeout={int(wait * 1000)}")
    try:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.execute(f"PRAGMA busy_timeout={int(previous)}")
    return busy == 0


def reclaim(conn: sqlite3.Connection, time_limit: float | None = None) -> int:
    """Give the file's free pages back to the filesystem, and empty the WAL; returns pages given back.

    Works in steps of ``RECLAIM_STEP_PAGES``, each its own transaction followed by a checkpoint,
    so the WAL never holds more than one step's moved pages (on a nearly full disk the steps get
    smaller). Stops after ``time_limit`` seconds (None: when done); the rest is given back next time.
    A file made before auto_vacuum was set (see database.py) cannot shrink: only the WAL is emptied.
    """
    started = time.monotonic()
    given = 0
    step = RECLAIM_STEP_PAGES
    if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
        while conn.execute("PRAGMA freelist_count").fetchone()[0] > 0:
            before = conn.execute("PRAGMA page_count").fetchone()[0]
            try:
                # executescript steps the pragma to its end (execute() would give back one page).
                conn.executescript(f"PRAGMA incremental_vacuum({step})")
            except sqlite3.Error as error:
                if not is_disk_full(error) or step <= 16:
                    raise
                step //= 8  # no room for a whole step's moved pages in the WAL: smaller steps
                _checkpoint_if_room(conn)
                continue
            freed = before - conn.execute("PRAGMA page_count").fetchone()[0]
            given += freed
            _checkpoint_if_room(conn)
            if freed <= 0:
                break
            if time_limit is not None and time.monotonic() - started > time_limit:
                break
    checkpoint(conn)
    return given


def _checkpoint_if_room(conn: sqlite3.Connection) -> None:
    """A checkpoint copies pages past the file's end into it, which takes room: on a full disk
    it waits for the final one, after the file has shrunk."""
    try:
        checkpoint(conn)
    except sqlite3.Error as error:
        if not is_disk_full(error):
            raise
