"""One process per directory: an exclusive advisory lock (``flock``) on the directory itself, taken
before anything is written there and held until the writer ends (a training run, an evaluation, a
grid, an export). The kernel releases it when the holder exits or dies, so no stale lock survives a
crash, and no lock file is left behind."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PROC_LOCKS = Path("/proc/locks")


def lock_holder(folder: Path, proc_locks: Path = PROC_LOCKS) -> str:
    """Who holds the ``flock`` on ``folder``: ``process PID (its command line)`` from the kernel's
    lock table, or ``another process`` where that table cannot tell (not Linux, another host)."""
    try:
        info = folder.stat()
        wanted = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
        for line in proc_locks.read_text().splitlines():
            fields = line.split()  # "1: FLOCK  ADVISORY  WRITE 4242 00:2e:1234 0 EOF"
            if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted:
                pid = fields[4]
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                return f"process {pid} ({command[:200]})" if command else f"process {pid}"
    except OSError:
        pass
    return "another process"


@contextmanager
def exclusive_dir(folder: str | os.PathLike, what: str = "run", choose: str = "choose another hydra.run.dir") -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (made if missing) for the ``with`` block. Raises
    ``ValueError`` naming the holder when another process holds it, before anything is written."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as err:
        raise ValueError(f"{what} directory {str(folder)!r} cannot be made or opened ({err.strerror or err}); {choose}") from err
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"{what} directory {str(folder)!r} is in use by {lock_holder(folder)}: one {what} per directory; "
                f"wait for it to finish, stop it, or {choose}"
            ) from None
        yield folder
    finally:
        os.close(fd)  # closing the last descriptor releases the lock
