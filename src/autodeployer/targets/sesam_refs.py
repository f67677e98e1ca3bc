"""Pure helpers for Sesam variables and secrets: references, the variables file, semantic diffs.

The Sesam target calls these; they do no I/O except :func:`load_variables` reading one file. Rules
come from ``/work/shared/reference/sesam-api.md`` sections 5, 9 and 10:

* ``$ENV(name)`` may appear in pipes, systems and metadata; ``$SECRET(name)`` in systems only.
  A reference is the run between ``$ENV(`` (or ``$SECRET(``) and the next ``)``; every string
  value of the parsed JSON is walked (not the raw text, so keys and escapes cannot confuse it).
* The variables file is one JSON object, possibly behind a UTF-8 byte-order mark, found by one of
  three conventions. Values are uploaded as they are: the node keeps booleans and numbers.
* Secret values never reach this module: secrets are compared by keyed fingerprint only.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from autodeployer.model import Problem

__all__ = [
    "Ref",
    "RefError",
    "SecretsDiff",
    "VariableValue",
    "VariablesDiff",
    "VariablesError",
    "VariablesLocation",
    "diff_secrets",
    "diff_variables",
    "find_refs",
    "load_variables",
    "missing_secrets",
    "missing_variables",
    "parse_variables",
    "same_value",
    "variables_location",
]

RefKind = Literal["env", "secret"]
#: What the node keeps as a variable value (section 5: booleans and numbers occur).
VariableValue = str | int | float | bool

_OPENING = re.compile(r"\$(ENV|SECRET)\(")
_VALID_NAME = re.compile(r"[^\s()]+")
_SNIPPET = 40


# --------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    """One ``$ENV(name)`` or ``$SECRET(name)`` found in an entity."""

    kind: RefKind
    name: str
    file: str
    entity: str
    path: str  # JSONPath of the string holding it, e.g. ``$['source']['url']``

    def __str__(self) -> str:
        token = "$ENV" if self.kind == "env" else "$SECRET"
        return f"{self.file}: {self.entity}: {token}({self.name}) at {self.path}"


class RefError(ValueError):
    """References that cannot be used; each problem names file and entity."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(str(p) for p in problems))


def _json_path(keys: list[str | int]) -> str:
    return "$" + "".join(f"[{k}]" if isinstance(k, int) else f"['{k}']" for k in keys)


def _has_opening(text: str) -> bool:
    return "$ENV(" in text or "$SECRET(" in text


def _candidate_strings(value: Any, keys: list[str | int], out: list[tuple[str, str]]) -> None:
    """Append ``(path, text)`` for string values holding an opening (keys are not config values).

    The path is built only on a hit and strings are filtered with a substring test, because this
    walk runs over every entity each cycle (1,000 entities: a few milliseconds).
    """
    if isinstance(value, str):
        if _has_opening(value):
            out.append((_json_path(keys), value))
        return
    items: Any
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return
    for key, item in items:
        if isinstance(item, str):
            if _has_opening(item):
                out.append((_json_path([*keys, key if isinstance(key, int) else str(key)]), item))
        elif isinstance(item, (dict, list)):
            keys.append(key if isinstance(key, int) else str(key))
            _candidate_strings(item, keys, out)
            keys.pop()


def _scan(text: str) -> Iterator[tuple[RefKind, str | None, str]]:
    """``(kind, name or None when malformed, why)`` for each opening found in ``text``."""
    for match in _OPENING.finditer(text):
        kind: RefKind = "env" if match.group(1) == "ENV" else "secret"
        close = text.find(")", match.end())
        if close < 0:
            yield kind, None, "has no closing parenthesis"
            continue
        name = text[match.end():close]
        if not _VALID_NAME.fullmatch(name):
            why = "nests another reference" if "(" in name else "has an empty or spaced name"
            yield kind, None, why
            continue
        yield kind, name, ""


def _entity_label(entity: Any, index: int) -> tuple[str, str]:
    """``(id for messages, type)`` of one entity, tolerant of a missing ``_id``."""
    if not isinstance(entity, dict):
        return f"entity #{index + 1}", ""
    _id = entity.get("_id")
    kind = entity.get("type")
    return (_id if isinstance(_id, str) and _id else f"entity #{index + 1}",
            kind if isinstance(kind, str) else "")


def find_refs(document: Any, file: str) -> list[Ref]:
    """Every reference in one parsed config file (an entity or a list of entities).

    Raises :class:`RefError` listing every malformed reference and every ``$SECRET`` outside a
    system, so one run reports them all instead of one per commit.
    """
    entities = document if isinstance(document, list) else [document]
    refs: list[Ref] = []
    problems: list[Problem] = []
    for index, entity in enumerate(entities):
        entity_id, entity_type = _entity_label(entity, index)
        is_system = entity_type.startswith("system:")
        candidates: list[tuple[str, str]] = []
        _candidate_strings(entity, [], candidates)
        for path, text in candidates:
            for kind, name, why in _scan(text):
                token = "$ENV(" if kind == "env" else "$SECRET("
                if name is None:
                    snippet = text if len(text) <= _SNIPPET else text[:_SNIPPET] + "..."
                    problems.append(Problem(f"{token} {why} at {path}: {snippet!r}", file, entity_id))
                elif kind == "secret" and not is_system:
                    problems.append(Problem(
                        f"$SECRET({name}) at {path} is only allowed in systems", file, entity_id
                    ))
                else:
                    refs.append(Ref(kind, name, file, entity_id, path))
    if problems:
        raise RefError(problems)
    return refs


def missing_variables(refs: Collection[Ref], variables: Collection[str]) -> list[Problem]:
    """One problem per ``$ENV`` whose name is not in ``variables`` (those live after the sync)."""
    return [
        Problem(f"variable {ref.name!r} is not defined (referenced at {ref.path})", ref.file,
                ref.entity)
        for ref in refs
        if ref.kind == "env" and ref.name not in variables
    ]


def missing_secrets(
    refs: Collection[Ref],
    available: Collection[str],
    system_secrets: Mapping[str, Collection[str]] | None = None,
) -> list[Problem]:
    """One problem per ``$SECRET`` found neither in ``available`` (source and node global names)
    nor among the secrets scoped to its own system."""
    scoped = system_secrets or {}
    return [
        Problem(f"secret {ref.name!r} is not defined (referenced at {ref.path})", ref.file,
                ref.entity)
        for ref in refs
        if ref.kind == "secret"
        and ref.name not in available
        and ref.name not in scoped.get(ref.entity, ())
    ]


# --------------------------------------------------------------------------------------------
# The variables file
# --------------------------------------------------------------------------------------------


class VariablesError(ValueError):
    """The variables file or the setting naming it is unusable; the message names which."""


@dataclass(frozen=True)
class VariablesLocation:
    """Where the variables file is in the repository, and the setting that said so."""

    path: str  # repository-relative, forward slashes
    setting: str  # e.g. ``VARIABLES_FILE_PATH``


def _safe_join(parts: list[str], setting: str) -> str:
    """Join repository path parts; refuse absolute paths and ``..`` (nothing outside the repo)."""
    joined = PurePosixPath(*[p.replace("\\", "/") for p in parts if p])
    if joined.is_absolute() or ".." in joined.parts or not joined.parts:
        raise VariablesError(f"{setting}: {str(joined)!r} must be a path inside the repository")
    return joined.as_posix()


def _plain_name(value: str, setting: str) -> str:
    if not value or "/" in value or "\\" in value or value in (".", ".."):
        raise VariablesError(f"{setting}: {value!r} must be a plain name, not a path")
    return value


def variables_location(
    *,
    sync_root: str = "",
    variables_file_path: str | None = None,
    env_vars_filename: str | None = None,
    profile: str | None = None,
    environment: str | None = None,
) -> VariablesLocation | None:
    """Resolve the variables file from exactly one convention (section 10), or ``None``.

    * ``VARIABLES_FILE_PATH``: a repository path (upstream G2), taken from the repository root.
    * ``ENV_VARS_FILENAME``: a file name in ``env-vars/`` beside ``pipes/`` (older upstream).
    * ``profile``: the sesam CLI's ``<profile>-env.json`` in ``SYNC_ROOT``.
    * ``environment``: Sesam-Deployer's ``variables/variables-<env>.json`` in ``SYNC_ROOT``.
    """
    given = {
        "VARIABLES_FILE_PATH": variables_file_path,
        "ENV_VARS_FILENAME": env_vars_filename,
        "profile": profile,
        "environment": environment,
    }
    chosen = [name for name, value in given.items() if value]
    if len(chosen) > 1:
        raise VariablesError(f"{' and '.join(chosen)} are both set; set only one")
    if not chosen:
        return None
    setting = chosen[0]
    value = str(given[setting])
    if setting == "VARIABLES_FILE_PATH":
        path = _safe_join([value], setting)
    elif setting == "ENV_VARS_FILENAME":
        path = _safe_join([sync_root, "env-vars", _plain_name(value, setting)], setting)
    elif setting == "profile":
        path = _safe_join([sync_root, f"{_plain_name(value, setting)}-env.json"], setting)
    else:
        name = f"variables-{_plain_name(value, setting)}.json"
        path = _safe_join([sync_root, "variables", name], setting)
    return VariablesLocation(path, setting)


def _no_duplicates(file: str) -> Any:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise VariablesError(f"{file}: variable {key!r} is defined twice")
            result[key] = value
        return result

    return hook


def parse_variables(data: bytes, file: str) -> dict[str, VariableValue]:
    """Parse a variables file: a JSON object of name → string, number or boolean.

    ``null``, lists and objects are refused naming the variable: the node would store them, but
    ``$ENV`` substitution of such values is undefined, and upstream never produced them.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise VariablesError(f"{file}: not UTF-8 text (byte {exc.start})") from None
    try:
        parsed = json.loads(text, object_pairs_hook=_no_duplicates(file))
    except json.JSONDecodeError as exc:
        raise VariablesError(
            f"{file}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    if not isinstance(parsed, dict):
        raise VariablesError(
            f"{file}: must be a JSON object of variable names to values, got a "
            f"{_json_type(parsed)}"
        )
    for name, value in parsed.items():
        if not name.strip():
            raise VariablesError(f"{file}: a variable has an empty name")
        if not isinstance(value, (str, int, float, bool)):
            raise VariablesError(
                f"{file}: variable {name!r} must be a string, number or boolean, got "
                f"{_json_type(value)}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise VariablesError(f"{file}: variable {name!r} is not a finite number")
    return parsed


def load_variables(repo_root: Path, location: VariablesLocation) -> dict[str, VariableValue]:
    """Read and parse the variables file from a checkout, refusing a symlink out of the tree."""
    shown = f"{location.path} ({location.setting})"
    root = Path(os.path.realpath(repo_root))
    target = Path(os.path.realpath(root / location.path))
    if target != root and root not in target.parents:
        raise VariablesError(f"{shown}: resolves outside the repository")
    try:
        data = target.read_bytes()
    except FileNotFoundError:
        raise VariablesError(f"{shown}: no such file in the repository") from None
    except OSError as exc:
        raise VariablesError(f"{shown}: cannot read it ({exc.strerror})") from None
    return parse_variables(data, location.path)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "list", str: "string", bool: "boolean"}.get(
        type(value), "number"
    )


# --------------------------------------------------------------------------------------------
# Semantic diffs
# --------------------------------------------------------------------------------------------


def same_value(a: Any, b: Any) -> bool:
    """JSON equality: ``1 == 1.0`` but ``true != 1`` and ``"1" != 1`` (Python's ``==`` mixes
    booleans and numbers)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


@dataclass(frozen=True)
class VariablesDiff:
    """Variables that ``PUT /api/env`` would add, change or remove. Values are shown: they are
    configuration, not secrets."""

    added: dict[str, Any] = field(default_factory=dict)
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    removed: dict[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    def lines(self) -> list[str]:
        """Readable lines, sorted by name: ``+ name = value``, ``~ name: old -> new``, ``- name``."""
        out: list[tuple[str, str]] = []
        out += [(n, f"+ {n} = {json.dumps(v)}") for n, v in self.added.items()]
        out += [(n, f"~ {n}: {json.dumps(o)} -> {json.dumps(v)}")
                for n, (o, v) in self.changed.items()]
        out += [(n, f"- {n} (was {json.dumps(v)})") for n, v in self.removed.items()]
        return [line for _, line in sorted(out)]

    def new_names(self) -> set[str]:
        """Names the node does not have yet: config using them must wait for the variables."""
        return set(self.added)


def diff_variables(desired: Mapping[str, Any], live: Mapping[str, Any]) -> VariablesDiff:
    """Compare the variables file with ``GET /api/env`` by name and JSON value."""
    return VariablesDiff(
        added={n: v for n, v in desired.items() if n not in live},
        changed={n: (live[n], v) for n, v in desired.items()
                 if n in live and not same_value(live[n], v)},
        removed={n: v for n, v in live.items() if n not in desired},
    )


@dataclass(frozen=True)
class SecretsDiff:
    """Secrets by name only. ``added``: not on the node; ``changed``: on the node, but the value
    differs from what was last sent (or was never sent by the deployer); ``unmanaged``: on the node
    and not in the source, kept (secrets are merged, never replaced)."""

    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    unmanaged: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.changed)

    @property
    def to_send(self) -> tuple[str, ...]:
        """Names to ``POST`` (merge) to the node."""
        return tuple(sorted(self.added + self.changed))

    def lines(self) -> list[str]:
        """``name: added`` / ``name: changed``, never a value."""
        marked = [(n, "added") for n in self.added] + [(n, "changed") for n in self.changed]
        return [f"{name}: {what}" for name, what in sorted(marked)]


def diff_secrets(
    desired: Mapping[str, str],
    last_sent: Mapping[str, str],
    live_names: Collection[str],
) -> SecretsDiff:
    """Compare fingerprints of the source's values (``desired``) with those recorded when last
    sent, and names with the node's list. Values never enter: only fingerprints and names do."""
    live = set(live_names)
    added = sorted(n for n in desired if n not in live)
    on_node = sorted(n for n in desired if n in live)
    changed = [n for n in on_node if last_sent.get(n) != desired[n]]
    unchanged = [n for n in on_node if last_sent.get(n) == desired[n]]
    unmanaged = sorted(live - set(desired))
    return SecretsDiff(tuple(added), tuple(changed), tuple(unchanged), tuple(unmanaged))
