"""Sync windows as pure functions, their configuration (YAML and SYNC_WINDOWS) with errors naming the
app and the window, and the reconciler holding a new revision outside them (real Git over loopback,
the in-process FakeTarget)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from autodeployer.config.loader import load_config
from autodeployer.errors import ConfigError
from autodeployer.model import Reason, Result, Status, Trigger
from autodeployer.rollout.windows import Window, allowed_at, held_reason, parse_duration, verdict
from autodeployer_emulators.gitserver import GitHttpServer, WorkRepo

from ..fakes import FakeTarget, MemoryStore, reconciler
from ..helpers import GIT_TOKEN

OSLO = ZoneInfo("Europe/Oslo")


def at(text: str, zone: ZoneInfo = OSLO) -> float:
    """Epoch seconds of a local time, e.g. at("2026-12-05 12:00")."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=zone).timestamp()


def window(kind: str, schedule: str, duration: str | float, timezone: str = "Europe/Oslo") -> Window:
    return Window.model_validate({"kind": kind, "schedule": schedule, "duration": duration, "timezone": timezone})


def window_now(seconds: float, kind: str = "deny", offset: float = -1.0) -> dict[str, object]:
    """A window (as configured) that opens `offset` seconds from now, for `seconds`: cron with seconds."""
    start = datetime.fromtimestamp(int(time.time() + offset), UTC)
    return {"kind": kind, "schedule": f"{start.minute} {start.hour} {start.day} {start.month} * {start.second}",
            "duration": f"{seconds}s", "timezone": "UTC"}


FRIDAY_FREEZE = window("deny", "0 16 * * FRI", "64h")  # Fri 16:00 to Mon 08:00
OFFICE_HOURS = window("allow", "0 8 * * MON-THU", "8h")  # Mon-Thu 08:00-16:00


# --------------------------------------------------------------------------- pure functions
@pytest.mark.parametrize(("text", "seconds"), [("64h", 230400), ("1h30m", 5400), ("10s", 10), ("2d", 172800),
                                                (90, 90), ("1.5m", 90)])
def test_durations_are_read_as_argo_cd_writes_them(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["64y", "", "h", 0, -5, True, "1h 2x"])
def test_a_wrong_duration_says_what_is_expected(text: object) -> None:
    with pytest.raises(ValueError, match=r"duration like 64h|more than 0"):
        parse_duration(text)


def test_a_deny_window_holds_until_it_closes_in_its_time_zone() -> None:
    saturday = at("2026-12-05 12:00")
    result = verdict([FRIDAY_FREEZE], saturday)
    assert not result.open and result.blocking == (FRIDAY_FREEZE,)
    assert result.next_open == at("2026-12-07 08:00")  # Friday 16:00 + 64 h
    assert held_reason(result, saturday).endswith("until Mon 08:00 CET")
    assert verdict([FRIDAY_FREEZE], at("2026-12-07 08:00")).open  # the end is not part of the window
    assert verdict([FRIDAY_FREEZE], at("2026-12-04 15:59")).open


def test_allow_windows_hold_everything_outside_them() -> None:
    thursday_evening = at("2026-12-03 17:00")
    result = verdict([OFFICE_HOURS], thursday_evening)
    assert not result.open and result.next_open == at("2026-12-07 08:00")  # no window on Friday
    assert "outside allow window" in held_reason(result, thursday_evening)
    assert verdict([OFFICE_HOURS], at("2026-12-01 09:30")).open
    assert not verdict([OFFICE_HOURS], at("2026-12-01 07:59")).open


def test_deny_wins_over_allow_and_the_opening_is_when_both_agree() -> None:
    always = window("allow", "0 0 * * *", "24h")
    lunch = window("deny", "0 11 * * *", "90m")
    assert not allowed_at([always, lunch], at("2026-12-01 11:30"))
    result = verdict([always, lunch], at("2026-12-01 11:30"))
    assert result.blocking == (lunch,) and result.next_open == at("2026-12-01 12:30")
    # deny Friday 16:00 for 64 h inside office hours: Monday 08:00 opens both
    assert verdict([OFFICE_HOURS, FRIDAY_FREEZE], at("2026-12-04 16:30")).next_open == at("2026-12-07 08:00")


def test_no_windows_always_open() -> None:
    assert verdict([], time.time()).open


def test_openings_follow_daylight_saving_time() -> None:
    morning = window("allow", "0 8 * * *", "1h")
    # 08:00 in Oslo is 06:00 UTC in summer and 07:00 UTC in winter
    assert verdict([morning], at("2026-07-01 05:00", UTC)).next_open == at("2026-07-01 06:00", UTC)
    assert verdict([morning], at("2026-12-01 05:00", UTC)).next_open == at("2026-12-01 07:00", UTC)


def test_seconds_in_the_schedule_give_short_windows() -> None:
    now = time.time()
    short = Window.model_validate(window_now(3))
    assert short.active(now) and not short.active(now + 3)
    assert verdict([short], now).next_open == pytest.approx(int(now) - 1 + 3)


# --------------------------------------------------------------------------- configuration
YAML = """
apps:
  - name: prod
    source: {{url: "https://github.com/acme/config.git"}}
    target: {{kind: sesam, api_url: "https://prod.example/api", jwt: abcdefgh}}
    policy: {policy}
"""


def load(tmp_path: Path, policy: str):  # type: ignore[no-untyped-def]
    config_file = tmp_path / "apps.yaml"
    config_file.write_text(YAML.format(policy=policy))
    return load_config({}, config_file)


def test_windows_in_yaml(tmp_path: Path) -> None:
    config = load(tmp_path, '{windows: [{kind: deny, schedule: "0 16 * * FRI", duration: 64h, timezone: Europe/Oslo},'
                            ' {kind: allow, schedule: "0 8 * * MON-THU", duration: 8h}], drift_in_window_only: true}')
    policy = config.apps[0].policy
    assert policy.windows == (FRIDAY_FREEZE, window("allow", "0 8 * * MON-THU", "8h", "UTC"))
    assert policy.drift_in_window_only is True


@pytest.mark.parametrize(("policy", "message"), [
    ('{windows: [{kind: deny, schedule: "0 16 * * FRX", duration: 64h}]}',
     r"apps\[prod\]\.policy\.windows\.0\.schedule: invalid cron schedule '0 16 \* \* FRX'"),
    ('{windows: [{kind: allow, schedule: "0 8 * * *", duration: 8h}, {kind: deny, schedule: "0 16 * * 5", '
     'duration: forever}]}', r"apps\[prod\]\.policy\.windows\.1\.duration: expected seconds or a duration"),
    ('{windows: [{kind: deny, schedule: "0 16 * * 5", duration: 1h, timezone: Europe/Atlantis}]}',
     r"windows\.0\.timezone: unknown time zone 'Europe/Atlantis'"),
    ('{windows: [{kind: block, schedule: "0 16 * * 5", duration: 1h}]}', r"windows\.0\.kind"),
    ('{windows: [{kind: deny, schedule: "0 16 * * 5", duration: 1h, zone: UTC}]}', r"windows\.0\.zone"),
])
def test_a_wrong_window_names_the_app_and_the_window(tmp_path: Path, policy: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, policy)


ENV = {"GIT_URL": "http://127.0.0.1:1/acme/config.git", "JWT": "jwt-value-123", "STATE_DIR": "/tmp/x"}


def test_windows_from_the_environment() -> None:
    config = load_config({**ENV, "SYNC_WINDOWS": '[{"kind": "deny", "schedule": "0 16 * * FRI", "duration": "64h", '
                                                  '"timezone": "Europe/Oslo"}]', "DRIFT_IN_WINDOW_ONLY": "true"})
    assert config.apps[0].policy.windows == (FRIDAY_FREEZE,)
    assert config.apps[0].policy.drift_in_window_only is True
    with pytest.raises(ConfigError, match=r"SYNC_WINDOWS\[0\]\.schedule: invalid cron"):
        load_config({**ENV, "SYNC_WINDOWS": '[{"kind": "deny", "schedule": "every friday", "duration": "1h"}]'})
    with pytest.raises(ConfigError, match="SYNC_WINDOWS: invalid JSON at line 1"):
        load_config({**ENV, "SYNC_WINDOWS": "[{kind: deny}]"})


def test_result_and_status_words_are_spelled_once() -> None:
    assert Result.HELD.label == "held" and Result.HELD.status is Status.HELD and not Result.HELD.ok
    assert Status.HELD.style == "yellow" and Reason.HELD.label


# --------------------------------------------------------------------------- the reconciler
def windows_env(git_server: GitHttpServer, tmp_path: Path, windows: list[dict[str, object]],
                **extra: str) -> dict[str, str]:
    import json

    return {"GIT_URL": git_server.url_for("acme/config.git"), "GITHUB_TOKEN": GIT_TOKEN, "JWT": "jwt-value-123",
            "STATE_DIR": str(tmp_path / "state"), "APP_NAME": "node", "SYNC_WINDOWS": json.dumps(windows), **extra}


def test_a_new_revision_is_held_once_and_deployed_when_the_window_closes(
        git_server: GitHttpServer, config_repo: WorkRepo, tmp_path: Path) -> None:
    async def scenario() -> None:
        store, target = MemoryStore(), FakeTarget()
        async with reconciler(windows_env(git_server, tmp_path, [window_now(5)]), target, store) as rec:
            held = await rec.sync(Trigger.POLL)
            assert held.result is Result.HELD and held.reason is Reason.HELD and not target.applied
            assert held.summary.startswith("held by window deny") and "until" in held.summary
            assert held.wake_at is not None and 0 < held.wake_at - time.time() < 5
            assert held.diff  # the row shows what waits
            rows = store.history("node")
            assert [r.result for r in rows] == ["held"] and rows[0].details["held"]["by"] == "window"
            writes = len(store.writes)
            again = await rec.sync(Trigger.POLL)  # a poll while it stays held writes nothing
            assert again.result is Result.HELD and len(store.writes) == writes and len(store.history("node")) == 1
            await asyncio.sleep(max(0.0, held.wake_at - time.time()) + 0.05)
            deployed = await rec.sync(Trigger.POLL)
            assert deployed.result is Result.SYNCED and len(target.applied) == 1
            assert store.get_state("node").last_synced_revision == config_repo.head

    asyncio.run(scenario())


def test_override_deploys_inside_a_deny_window_and_says_so(
        git_server: GitHttpServer, config_repo: WorkRepo, tmp_path: Path) -> None:
    async def scenario() -> None:
        store, target = MemoryStore(), FakeTarget()
        async with reconciler(windows_env(git_server, tmp_path, [window_now(600)]), target, store) as rec:
            assert (await rec.sync(Trigger.MANUAL, force=True)).result is Result.HELD  # manual is held too
            result = await rec.sync(Trigger.MANUAL, force=True, override_window=True)
            assert result.result is Result.SYNCED and len(target.applied) == 1
            override = store.history("node")[0].details["window_override"]
            assert override["overridden"] is True and override["would_hold"].startswith("held by window deny")

    asyncio.run(scenario())


@pytest.mark.parametrize("in_window_only", [False, True])
def test_drift_repair_is_held_only_when_asked(git_server: GitHttpServer, config_repo: WorkRepo, tmp_path: Path,
                                               in_window_only: bool) -> None:
    async def scenario() -> None:
        store, target = MemoryStore(), FakeTarget()
        opens = int(time.time() + 2.5)
        env = windows_env(git_server, tmp_path, [window_now(600, offset=opens - time.time())], DRIFT_INTERVAL="0.01",
                          DRIFT_IN_WINDOW_ONLY=str(in_window_only).lower())
        async with reconciler(env, target, store) as rec:
            assert (await rec.sync(Trigger.POLL)).result is Result.SYNCED  # before the window opens
            await asyncio.sleep(opens - time.time() + 0.1)
            target.live["pipes/extra.conf.json"] = "{}"  # someone changed the target
            repaired = await rec.sync(Trigger.POLL)
            assert repaired.result is (Result.HELD if in_window_only else Result.SYNCED)
            assert ("pipes/extra.conf.json" in target.live) is in_window_only

    asyncio.run(scenario())


def test_a_held_revision_is_pending_on_github_and_not_notified() -> None:
    from autodeployer.model import SyncResult
    from autodeployer.reporters.commit_status import status_for
    from autodeployer.reporters.notify import event_for

    reason = "held by window deny '0 16 * * FRI' for 64h (Europe/Oslo) until Mon 08:00 CET"
    result = SyncResult("prod", Trigger.WEBHOOK, Result.HELD, revision="a" * 40, summary=reason, error=reason,
                        reason=Reason.HELD)
    assert status_for(result) == ("pending", reason)
    assert event_for(Result.HELD, Result.FAILED, "all") is None and event_for(Result.HELD, None, "all") is None
