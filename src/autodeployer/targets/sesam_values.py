"""Variables and secrets of a Sesam node as desired state: what to check, show and send.

Pure planning on top of :mod:`.sesam_refs` and :mod:`autodeployer.secret_sources`; the target does
the HTTP. Secret values pass through :class:`SecretValues` only, whose ``repr`` hides them, from the
source to the ``POST /api/secrets`` body: plans, history and logs see names and the keyed hash.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import Refused
from ..model import Action, Change, Problem
from ..secret_sources import Fingerprinter, SecretSource, SecretSourceError
from .sesam_refs import Ref, SecretsDiff, VariablesDiff, diff_secrets

__all__ = [
    "FINGERPRINTS",
    "SecretValues",
    "ValuesPlan",
    "fetch_values",
    "first_value",
    "read_secrets",
    "secret_changes",
    "variable_changes",
]

FINGERPRINTS = "secret_fingerprints"  # key of the target memory: name -> keyed hash last sent


class SecretValues:
    """Secret values by name, for one apply. Never shown: ``repr`` lists names only."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)

    def __repr__(self) -> str:
        return f"SecretValues({sorted(self._values)})"

    def __bool__(self) -> bool:
        return bool(self._values)

    def names(self) -> list[str]:
        return sorted(self._values)

    def body(self, names: Collection[str]) -> dict[str, str]:
        """The ``POST /api/secrets`` body for ``names``: never a null, never a name without a value."""
        return {name: self._values[name] for name in sorted(names)}


@dataclass
class ValuesPlan:
    """The variables and secrets steps of one sync."""

    variables: dict[str, Any] | None = None  # the variables file: desired state; None = unmanaged
    variables_diff: VariablesDiff = field(default_factory=VariablesDiff)
    live_variables: dict[str, Any] = field(default_factory=dict)
    secrets: SecretValues = field(default_factory=lambda: SecretValues({}))
    secrets_diff: SecretsDiff = field(default_factory=SecretsDiff)
    fingerprints: dict[str, str] = field(default_factory=dict)  # of the values now in the source

    @property
    def first_env(self) -> dict[str, Any] | None:
        """``PUT /api/env`` before the config: the live set with every new or changed value, so a config
        that needs a new name finds it, and one still using a name to be removed keeps it meanwhile."""
        if self.variables is None or not (self.variables_diff.added or self.variables_diff.changed):
            return None
        return {**self.live_variables, **self.variables}

    @property
    def final_env(self) -> dict[str, Any] | None:
        """``PUT /api/env`` after the config: exactly the file, once no config uses a removed name."""
        if self.variables is None or not self.variables_diff.removed:
            return None
        return dict(self.variables)


def variable_changes(diff: VariablesDiff) -> list[Change]:
    """One change per variable, values shown (they are configuration, not secrets)."""
    changes = [Change(Action.ADD, n, "variable", f"+ {n} = {json.dumps(v)}") for n, v in sorted(diff.added.items())]
    changes += [Change(Action.CHANGE, n, "variable", f"~ {n}: {json.dumps(old)} -> {json.dumps(new)}")
                for n, (old, new) in sorted(diff.changed.items())]
    changes += [Change(Action.REMOVE, n, "variable", f"- {n} (was {json.dumps(v)})")
                for n, v in sorted(diff.removed.items())]
    return changes


def secret_changes(diff: SecretsDiff) -> list[Change]:
    """``name: added`` / ``name: changed``: never a value, never a hash."""
    added = [Change(Action.ADD, n, "secret", f"{n}: added") for n in diff.added]
    return added + [Change(Action.CHANGE, n, "secret", f"{n}: changed") for n in diff.changed]


async def _first_value(sources: Sequence[SecretSource], name: str) -> str | None:
    """The value from the first source holding ``name``; ``None`` when none has it.

    Anything but "not found" (a 403, a 5xx, a hang, a value that is not a string) is an error: the
    sync must not go on guessing whether the secret exists.
    """
    for source in sources:
        try:
            return await source.get(name)
        except SecretSourceError as exc:
            if not exc.reason.startswith("not found"):
                raise
    return None


first_value = _first_value  # public for the scoped secrets and pruning (sesam_scoped)


async def fetch_values(sources: Sequence[SecretSource], names: Sequence[str]) -> list[str | BaseException | None]:
    """Every name's value (``None``: in no source; an exception: the error), read concurrently: each Vault
    read is a round trip in a worker thread, and a drift check pays them all."""
    if not sources:
        return [None for _ in names]
    return await asyncio.gather(*(_first_value(sources, name) for name in names), return_exceptions=True)


async def read_secrets(
    refs: Sequence[Ref],
    sources: Sequence[SecretSource],
    live_names: Collection[str],
    system_secrets: Mapping[str, Collection[str]],
    fingerprinter: Fingerprinter | None,
    last_sent: Mapping[str, str],
    fetched: Awaitable[list[str | BaseException | None]] | None = None,
) -> tuple[SecretValues, SecretsDiff, dict[str, str], list[str]]:
    """Values, diff, fingerprints and plan warnings for the ``$SECRET`` names of the configuration.

    ``fetched``: the answers of :func:`fetch_values` for the sorted names, started earlier by the caller
    (so the source's round trips overlap the node's).

    With sources: every name is in a source or on the node (globally or in its system's own list),
    else :class:`Refused` before anything is written. Without: an unknown name is a warning only.
    """
    secret_refs = [r for r in refs if r.kind == "secret"]
    names = sorted({r.name for r in secret_refs})
    known = set(live_names)

    def on_node(ref: Ref) -> bool:
        return ref.name in known or ref.name in system_secrets.get(ref.entity, ())

    if not sources:
        warnings = [f"{r.file}: {r.entity}: secret {r.name!r} is not on the node and no secret source is set"
                    for r in secret_refs if not on_node(r)]
        return SecretValues({}), SecretsDiff(), {}, warnings
    values: dict[str, str] = {}
    problems: list[Problem] = []
    answers = await (fetched if fetched is not None else fetch_values(sources, names))
    for name, answer in zip(names, answers, strict=True):
        if isinstance(answer, SecretSourceError):
            problems.extend(Problem(str(answer), r.file, r.entity) for r in secret_refs if r.name == name)
        elif isinstance(answer, BaseException):
            raise answer
        elif answer is not None:
            values[name] = answer
    problems += [
        Problem(f"secret {r.name!r} is in no secret source and not on the node (referenced at {r.path})",
                r.file, r.entity)
        for r in secret_refs if r.name not in values and not on_node(r)
    ]
    if problems:
        raise Refused("secrets referenced by the configuration cannot be deployed", problems)
    fingerprints = {n: fingerprinter.fingerprint(n, v) for n, v in values.items()} if fingerprinter else {}
    diff = diff_secrets(fingerprints, last_sent, live_names)
    return SecretValues(values), diff, fingerprints, []
