"""A head start for a push's sync: the commit a webhook delivery names is fetched, and the target's
live state read, while the head check runs.

A delivery is never trusted for the revision (deliveries can be late or out of order; the worker
resolves the branch head itself). It is only a good guess: almost always the head check answers
the commit the delivery named, and then the fetch of that commit and the read of the live state
have been under way for the whole round trip of the head check. When the guess was wrong, the
speculative fetch is left to finish (a git killed mid-write leaves lock files in the mirror) and
the sync fetches the real head as it always did; the live state read meanwhile is still good,
as it does not depend on the commit.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def commit_hint(value: object) -> str | None:
    """The commit a delivery names (`after`), or None: not a full sha, or the zero sha of a deletion."""
    if not isinstance(value, str) or not _SHA.fullmatch(value) or not value.strip("0"):
        return None
    return value


@dataclass
class HeadStart:
    """The fetch of the delivered commit and the target's live read, both started at once."""

    sha: str
    fetch: asyncio.Task[str]
    prefetched: asyncio.Task[Any] | None

    @classmethod
    def begin(cls, sha: str, fetch: Callable[[str], Awaitable[str]],
              prefetch: Callable[[], asyncio.Task[Any] | None]) -> HeadStart:
        async def fetching() -> str:
            return await fetch(sha)

        task = asyncio.get_running_loop().create_task(fetching())
        task.add_done_callback(_retrieve)  # a wrong guess's failure must not be logged as never retrieved
        return cls(sha, task, prefetch())

    async def settle(self) -> None:
        """Wait for the speculative fetch to end, whatever its outcome (the guess was wrong)."""
        await asyncio.wait({self.fetch})

    def abandon(self) -> None:
        """The sync ended before it used the head start: stop the live read, let the fetch end alone."""
        if self.prefetched is not None and not self.prefetched.done():
            self.prefetched.cancel()
        elif self.prefetched is not None and not self.prefetched.cancelled():
            self.prefetched.exception()


def _retrieve(task: asyncio.Task[str]) -> None:
    if not task.cancelled():
        task.exception()
