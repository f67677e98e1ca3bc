"""The one place the reconciler asks the rollout policy: which revision to deploy, and may it go now.

Built per app from its policy; reads the store (the upstream's state and history) on each question, so
another replica's syncs count as soon as they are recorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config.loader import AppConfig
from ..store.base import AppState, Store
from . import Hold
from .promotion import promotion_hold
from .windows import held_reason, verdict

HISTORY_SCAN = 50  # upstream rows read to find when a revision went live there


@dataclass
class RolloutGate:
    app: AppConfig
    store: Store
    clock: Callable[[], float] = field(default=time.time)

    @property
    def active(self) -> bool:
        policy = self.app.policy
        return bool(policy.windows) or policy.promote_from is not None

    @property
    def upstream(self) -> str | None:
        return self.app.policy.promote_from

    def promoted_revision(self) -> tuple[str | None, Hold | None]:
        """The upstream's verified revision, which a promoted app deploys instead of its branch head;
        a Hold when the upstream has none yet."""
        upstream = self.upstream
        if upstream is None:
            return None, None
        state = self.store.get_state(upstream)
        if state.last_synced_revision is None:
            return None, Hold("promotion", f"waiting for {upstream}: nothing deployed there yet", None,
                              {"upstream": upstream})
        return state.last_synced_revision, None

    def check(self, state: AppState, revision: str, *, drift: bool, override_window: bool = False) -> Hold | None:
        """None when `revision` may be applied now. `drift`: the revision is already the app's, and the
        sync only repairs a change made on the target (held by windows only with drift_in_window_only)."""
        if not drift:
            hold = self._promotion(state, revision)
            if hold is not None:
                return hold
        return self.window_hold(drift=drift, override_window=override_window)

    def window_hold(self, *, drift: bool = False, override_window: bool = False) -> Hold | None:
        """The sync windows' answer now (None: open, overridden, or a drift repair allowed anytime)."""
        policy = self.app.policy
        if not policy.windows or override_window or (drift and not policy.drift_in_window_only):
            return None
        now = self.clock()
        result = verdict(policy.windows, now)
        if result.open:
            return None
        return Hold("window", held_reason(result, now), result.next_open,
                    {"windows": [w.describe() for w in result.blocking], **({"drift": True} if drift else {})})

    def _promotion(self, state: AppState, revision: str) -> Hold | None:
        upstream = self.upstream
        if upstream is None:
            return None
        if revision == state.last_synced_revision and state.pinned_revision is None:
            return None  # already deployed here: nothing is promoted
        up = self.store.get_state(upstream)
        rows = self.store.history(upstream, HISTORY_SCAN)
        return promotion_hold(upstream, up, revision, self.app.policy.soak, self.clock(), rows)
