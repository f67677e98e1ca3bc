"""One head check per repository, branch and credentials per poll interval, however many apps follow it.

Apps that deploy the same repository (one per environment, region or node) share the mirror and its
fetches already; without this, each of N apps still asked the Git host for the branch head every
interval, N requests for one answer. `SharedHeads` is one per process (built by the runtime, passed
to every `GitSource`): a poll's head check is answered from the last check of the same key when that
check is recent enough (`max_age`, the app's poll interval) and newer than this app's own last check;
concurrent callers wait for one request in flight. So N apps polling every interval cost about one
request per interval (the next one is sent by the app whose own check answered last, at its next poll,
or by any app once the answer is older than the interval), and an app alone still checks on each of
its own polls.

The key is (URL, ref, how the head is read, a keyed digest of the credentials): an app with another
token must not be told a head its own token would not be allowed to see (nor be spared the failure).
The digest's key is random per process, so the credentials cannot be recovered from the keys in
memory. Across replicas each process has its own `SharedHeads`: each replica checks once per
interval for the apps it owns.

Only polls share. A webhook, a manual sync or a start-up resolves the head afresh (a push must
never be answered with the head from before it), and its answer refreshes the shared entry, so the
apps polling the same branch see the new head at their next poll.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .leanpost import LeanPool

HeadCheck = Callable[[], Awaitable[str]]


@dataclass(frozen=True)
class HeadAnswer:
    """A head, the generation of the check that answered (the caller's `seen` next time), and
    whether another caller's check answered it."""

    sha: str
    generation: int
    shared: bool


def credentials_identity(key: bytes, *secrets: str | None) -> str:
    """A keyed digest standing for the credentials: equal credentials, equal identity; never reversible."""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for secret in secrets:
        mac.update(b"\0" if secret is None else b"\1" + secret.encode() + b"\0")
    return mac.hexdigest()


@dataclass
class _Entry:
    """The newest answer for one key, and the request bringing the next one."""

    sha: str | None = None
    checked_at: float = float("-inf")  # monotonic time the request that answered was sent
    generation: int = 0  # grows with each request, so an app can tell whether it has used an answer
    pending: asyncio.Task[str] | None = None
    pending_generation: int = 0


@dataclass
class SharedHeads:
    """The head checks of one process, shared between the sources that ask the same question."""

    clock: Callable[[], float] = time.monotonic
    secret: bytes = field(default_factory=lambda: os.urandom(32))
    requests: int = 0  # head checks actually sent (for tests and benchmarks)
    shared: int = 0  # polls answered by another app's check
    connections: LeanPool = field(default_factory=LeanPool)  # kept-alive sockets of the checks (leanpost.py)
    _entries: dict[tuple[str, ...], _Entry] = field(default_factory=dict)
    _generations: int = 0

    def identity(self, *secrets: str | None) -> str:
        return credentials_identity(self.secret, *secrets)

    async def head(self, key: tuple[str, ...], check: HeadCheck, *, max_age: float, seen: int) -> HeadAnswer:
        """The head for `key` and the generation of that answer (pass it back as `seen` next time).

        `max_age` > 0 (a poll): an answer at most that old and newer than the caller's own last check
        (its generation is above `seen`), or the request in flight, is shared; otherwise `check` runs.
        `max_age` <= 0: `check` runs now, whatever is cached or in flight, and its answer is shared.
        A failed check is not cached: every caller waiting on it gets its error, the next asks again."""
        entry = self._entries.setdefault(key, _Entry())
        if max_age > 0:
            if entry.pending is not None and entry.pending_generation > seen:
                self.shared += 1
                generation = entry.pending_generation
                return HeadAnswer(await asyncio.shield(entry.pending), generation, True)
            if entry.sha is not None and entry.generation > seen and self.clock() - entry.checked_at <= max_age:
                self.shared += 1
                return HeadAnswer(entry.sha, entry.generation, True)
        task, generation = self._start(entry, check)
        return HeadAnswer(await asyncio.shield(task), generation, False)

    def _start(self, entry: _Entry, check: HeadCheck) -> tuple[asyncio.Task[str], int]:
        """Send one check as a task of its own: a caller that is cancelled does not cancel the others'."""
        self.requests += 1
        self._generations += 1
        sent, generation = self.clock(), self._generations
        task = asyncio.get_running_loop().create_task(_call(check))
        entry.pending, entry.pending_generation = task, generation

        def settle(done: asyncio.Task[str]) -> None:
            if entry.pending is done:
                entry.pending = None
            if done.cancelled() or done.exception() is not None:
                return  # retrieved here, so a failure nobody waited for is not logged as lost
            if generation > entry.generation:  # an older request finishing late never replaces a newer answer
                entry.sha, entry.checked_at, entry.generation = done.result(), sent, generation

        task.add_done_callback(settle)
        return task, generation


async def _call(check: HeadCheck) -> str:
    return await check()
