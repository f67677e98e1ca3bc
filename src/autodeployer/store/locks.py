"""One app's apply lock across the processes sharing a STATE_DIR (what a store of one process hands out)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import time
from pathlib import Path

from ..logs import get_logger


class AppLock:
    """One app's apply lock across the processes sharing a STATE_DIR: an exclusive ``flock`` on
    ``STATE_DIR/locks/<app>.lock``, held for a whole sync (read state, plan, apply, verify, record).

    The service's worker and a CLI run next to it (``sync``, ``rollback``, ``resume`` without
    ``--server``) both take it, so two processes never apply the same app at once. The kernel releases
    it when its holder dies, so a killed process never leaves an app locked. The holder writes its pid
    into the file, for the message the other one prints. Re-entrant within one object: a CLI rollback
    holds it across the pin and the sync that deploys it.

    ``path`` None (the PostgreSQL store, which proves ownership with advisory locks in ``begin()``, or
    a STATE_DIR that cannot be written) makes a lock that always succeeds.
    """

    POLL = 0.1  # seconds between attempts while waiting

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._fd: int | None = None
        self._depth = 0
        self._unusable = False  # the lock file cannot be created: applies go on unlocked (logged once)

    @classmethod
    def in_state_dir(cls, state_dir: Path, app: str) -> AppLock:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", app) or "_"  # app names come from configuration
        return cls(state_dir / "locks" / f"{safe}.lock")

    def try_acquire(self) -> bool:
        """Take the lock if no other process holds it; True when this object now holds it."""
        if self._depth or self.path is None or self._unusable:
            self._depth += 1
            return True
        try:
            fd = self._open(self.path)
        except OSError as exc:  # a read-only or full STATE_DIR must not stop every sync
            self._unusable = True
            get_logger(component="lock").warning("cannot create the app's lock file; syncs of this process are "
                                                 "not protected against a CLI run beside it", path=str(self.path),
                                                 error=exc.strerror or str(exc))
            self._depth += 1
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        try:  # who holds it, for the message another process prints
            holder = f"{os.getpid()}\n".encode()
            # Unchanged when this process held it last (every poll takes the lock): a truncate and write
            # per poll cost ~0.8 ms of CPU in the filesystem's journal, most of an idle poll.
            if os.pread(fd, len(holder) + 1, 0) != holder:
                os.ftruncate(fd, 0)
                os.pwrite(fd, holder, 0)
        except OSError:
            pass
        self._fd, self._depth = fd, 1
        return True

    @staticmethod
    def _open(path: Path) -> int:
        """The lock file's descriptor; its directory is made only when missing (a `mkdir` on every poll
        was a system call per idle poll for nothing)."""
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    async def acquire(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the lock (polling: flock has no timeout, and the event loop
        must not block)."""
        deadline = time.monotonic() + timeout
        while not self.try_acquire():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(self.POLL)
        return True

    def release(self) -> None:
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor releases the flock

    def holder(self) -> str:
        """'pid N' of the process holding the lock, as far as its file says."""
        try:
            pid = self.path.read_text().strip() if self.path else ""
        except OSError:
            pid = ""
        return f"pid {pid}" if pid.isdigit() else "another process"

    def busy_message(self, app: str) -> str:
        return f"app {app} is being synced by {self.holder()}; retry, or use --server URL to ask the running service"
