"""Sync windows: when an app may deploy a new revision, as Argo CD's sync windows decide it.

A window is a cron schedule (its opening), a duration and a time zone, of kind `allow` or `deny`.
The rules are Argo CD's: no windows, everything is allowed; an active `deny` window blocks (deny
wins over allow); when any `allow` window is defined, a sync is allowed only inside one of them.
Pure functions of the windows and a clock: the reconciler asks whether now is open, and when the
next opening is (to record "held until ..." and to wake the app's worker then).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

_DURATION = re.compile(r"^(?:(?P<d>\d+(?:\.\d+)?)d)?(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m)?"
                       r"(?:(?P<s>\d+(?:\.\d+)?)s)?$")
_UNIT_SECONDS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
SEARCH_STEPS = 2000  # boundaries looked at when searching the next opening (a year of daily windows is 730)


def parse_duration(value: Any) -> float:
    """Seconds from a number or a Go-style string (`64h`, `1h30m`, `10s`, `2d`): Argo CD's spelling."""
    if isinstance(value, bool):
        raise ValueError(f"expected seconds or a duration like 64h, 30m, 10s; got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        match = _DURATION.match(text) if text else None
        if match is None or not any(match.groupdict().values()):
            raise ValueError(f"expected seconds or a duration like 64h, 30m, 10s; got {value!r}")
        seconds = sum(float(v) * _UNIT_SECONDS[k] for k, v in match.groupdict().items() if v)
    if not seconds > 0:
        raise ValueError(f"must be more than 0 seconds, got {value!r}")
    return seconds


class Window(BaseModel):
    """One sync window as YAML (and SYNC_WINDOWS) spell it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["allow", "deny"]
    schedule: str  # cron: 5 fields, or 6 with seconds last (croniter's extension; short test windows)
    duration: float = Field(gt=0)  # seconds; written as 64h, 30m, 10s or a number
    timezone: str = "UTC"

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        fields = value.split()
        if len(fields) not in (5, 6) or not croniter.is_valid(value):
            raise ValueError(f"invalid cron schedule {value!r} (expected 5 fields, e.g. '0 16 * * FRI', "
                             "or 6 with seconds last)")
        return value

    @field_validator("duration", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (an IANA name, e.g. Europe/Oslo or UTC)") from None
        return value

    def describe(self) -> str:
        return f"{self.kind} '{self.schedule}' for {format_duration(self.duration)} ({self.timezone})"

    def _zone_info(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def last_opening(self, now: float) -> float:
        """The latest opening at or before `now` (epoch seconds)."""
        at = datetime.fromtimestamp(now, self._zone_info())
        # croniter's get_prev is strictly before its start: start just after now so an opening at now counts
        return float(croniter(self.schedule, at + timedelta(microseconds=1)).get_prev(float))

    def active(self, now: float) -> bool:
        """Inside [opening, opening + duration). Later openings end later, so the latest one decides."""
        return now < self.last_opening(now) + self.duration

    def boundaries(self, now: float, horizon: float) -> list[float]:
        """Times after `now` (within `horizon` seconds) at which this window opens or closes."""
        found: list[float] = []
        start = self.last_opening(now)
        if start + self.duration > now:
            found.append(start + self.duration)
        it = croniter(self.schedule, datetime.fromtimestamp(now, self._zone_info()))
        while len(found) < SEARCH_STEPS:
            opening = float(it.get_next(float))
            if opening > now + horizon:
                break
            found.extend((opening, opening + self.duration))
        return found


@dataclass(frozen=True)
class WindowVerdict:
    """Whether a sync may run now; when not, the windows responsible and the next opening."""

    open: bool
    blocking: tuple[Window, ...] = ()  # the active deny windows, or every allow window when none is active
    next_open: float | None = None  # epoch seconds; None when open, or when no opening was found


def allowed_at(windows: Sequence[Window], now: float) -> bool:
    """Argo CD's rule: an active deny blocks; defined allow windows allow only while one is active."""
    if any(w.kind == "deny" and w.active(now) for w in windows):
        return False
    allows = [w for w in windows if w.kind == "allow"]
    return not allows or any(w.active(now) for w in allows)


def verdict(windows: Sequence[Window], now: float, horizon: float = 366 * 86400.0) -> WindowVerdict:
    """Open now, or held: by which windows, and until when (the first boundary at which a sync is allowed)."""
    if allowed_at(windows, now):
        return WindowVerdict(True)
    denying = tuple(w for w in windows if w.kind == "deny" and w.active(now))
    blocking = denying or tuple(w for w in windows if w.kind == "allow")
    points = sorted({p for w in windows for p in w.boundaries(now, horizon)})
    for point in points[:SEARCH_STEPS]:
        if allowed_at(windows, point):
            return WindowVerdict(False, blocking, point)
    return WindowVerdict(False, blocking, None)


def format_duration(seconds: float) -> str:
    """64h, 1h30m, 8s: how windows are written."""
    whole = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size and not (unit == "d" and whole % 86400):
            parts.append(f"{whole // size}{unit}")
            whole %= size
    return "".join(parts) or f"{seconds:g}s"


def format_when(epoch: float, timezone: str, now: float) -> str:
    """'Mon 08:00' within a week, else '2026-12-24 08:00'; seconds shown when the window has them."""
    at = datetime.fromtimestamp(epoch, ZoneInfo(timezone))
    clock = "%H:%M:%S" if at.second else "%H:%M"
    day = "%a" if epoch - now < 6 * 86400 else "%Y-%m-%d"
    return at.strftime(f"{day} {clock} %Z").strip()


def held_reason(result: WindowVerdict, now: float) -> str:
    """"held by window deny '0 16 * * FRI' for 64h (Europe/Oslo) until Mon 08:00 CET"."""
    names = "; ".join(w.describe() for w in result.blocking)
    word = "outside allow window" if result.blocking and result.blocking[0].kind == "allow" else "by window"
    if len(result.blocking) > 1:
        word += "s"
    zone = result.blocking[0].timezone if result.blocking else "UTC"
    until = format_when(result.next_open, zone, now) if result.next_open else "no opening within a year"
    return f"held {word} {names} until {until}"


def _duration_or_zero(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
        return 0.0
    if isinstance(value, str) and value.strip() in ("0", "0s"):
        return 0.0
    return parse_duration(value)


#: A policy duration in seconds, written as a number or as 10m, 3s, 1h30m (0 allowed: e.g. no soak).
Duration = Annotated[float, BeforeValidator(_duration_or_zero), Field(ge=0)]


def windows_from_json(text: str) -> tuple[Window, ...]:
    """SYNC_WINDOWS' value; a ValueError's text starts with where it is wrong (`[1].schedule: ...`)."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f": invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(raw, list):
        raise ValueError(": expected a JSON list of windows")
    found = []
    for index, item in enumerate(raw):
        try:
            found.append(Window.model_validate(item))
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = "".join(f".{p}" for p in first["loc"])
            raise ValueError(f"[{index}]{loc}: {first['msg'].removeprefix('Value error, ')}") from None
    return tuple(found)
