"""Scenario 8: what the variables and secrets steps add to a Sesam cycle, and that idle polls skip them.

Two apps, each with its own repository and emulated node holding exactly what Git holds, so every cycle
finds no change: the baseline's 1,000 entities have no ``$ENV``/``$SECRET`` and no variables file or
secret source is configured; the other's are the same entities with an ``$ENV`` in every entity and a
``$SECRET`` in every system, a 50-variable file (``VARIABLES_FILE_PATH``) and a Vault (emulator, token
auth) holding the 5 secrets. A cycle is a manual sync of an unchanged head (the drift check's path:
live state read, plan, nothing written). The difference between the two medians is what the variables
and secrets steps cost: the variables file read (memoised by bytes), the walk, ``GET /api/env``, the diff,
``GET /api/secrets``, one Vault read per secret name, and the keyed hashes. Then idle polls (``POLL``
trigger, head unchanged, last sync good) are counted at the node and Vault: they must ask neither.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from autodeployer.config.loader import AppConfig, Config, Policy, ServiceSettings
from autodeployer.logs import configure_logging
from autodeployer.model import Result, Trigger
from autodeployer.runtime import build_runtime
from autodeployer.secret_sources import Fingerprinter
from autodeployer.sources.spec import SourceSpec
from autodeployer.targets import sesam
from autodeployer.targets.sesam_refs import diff_variables, find_refs, parse_variables
from autodeployer_emulators._server import LoopbackServer
from autodeployer_emulators.gitserver import WorkRepo
from autodeployer_emulators.sesam import SesamEmulator
from autodeployer_emulators.vault import VaultEmulator

from .core import Options, ScenarioResult, Summary, Table, fmt_summary, ms
from .fixtures import GIT_TOKEN, SESAM_JWT, ServerProcess, entities, entity, entity_file, entity_path

SIZE, VARIABLES, SECRETS = 1_000, 50, 5
VAULT_TOKEN = "bench-vault-root-0001"
VARIABLES_FILE = "variables/node.json"
NODE_PATHS = ("/api/env", "/api/secrets")


def with_refs(i: int) -> dict[str, Any]:
    """Entity ``i`` of the fixtures, with one ``$ENV`` (and in systems one ``$SECRET``) added."""
    e = entity(i)
    if e["type"] == "pipe":
        e["source"]["url"] = f"$ENV(host-{i % VARIABLES})/data"
    else:
        e["url_pattern"] = f"$ENV(host-{i % VARIABLES})/api/%s"
        e["password"] = f"$SECRET(secret-{(i // 10) % SECRETS})"
    return e


def variables() -> dict[str, str]:
    return {f"host-{k}": f"http://host{k}.example.org" for k in range(VARIABLES)}


def secret_values() -> dict[str, str]:
    return {f"secret-{k}": f"bench-secret-value-{k:04d}" for k in range(SECRETS)}


def plain_file(i: int) -> tuple[str, bytes]:
    e = entity(i)
    return entity_path(e), entity_file(e)


def refs_file(i: int) -> tuple[str, bytes]:
    if i == SIZE:
        return VARIABLES_FILE, json.dumps(variables(), indent=2).encode()
    e = with_refs(i)
    return entity_path(e), entity_file(e)


def app(name: str, git_url: str, api: str, vault_url: str | None) -> AppConfig:
    extra: dict[str, Any] = {}
    if vault_url is not None:
        extra = {"variables_file_path": VARIABLES_FILE, "vault_url": vault_url,
                 "vault_token": SecretStr(VAULT_TOKEN), "vault_path_prefix": "bench/"}
    return AppConfig(
        name=name,
        source=SourceSpec(url=git_url, token=SecretStr(GIT_TOKEN), repo_full_name=f"acme/{name}"),
        target=sesam.Spec(api_url=api, jwt=SecretStr(SESAM_JWT), timeout=600, **extra),
        policy=Policy(interval=60),
    )


def timed_steps(target: Any, spent: list[float]) -> None:
    """Wrap the target's variables-and-secrets steps (``_values``, ``_extra``) so each cycle's time in them
    is recorded: that figure does not depend on the other app's cycle, unlike a difference of medians."""
    for attribute in ("_values", "_extra"):
        step = getattr(target, attribute)

        async def wrapped(*args: Any, _step: Any = step, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await _step(*args, **kwargs)
            finally:
                spent.append(time.perf_counter() - t0)

        setattr(target, attribute, wrapped)


async def cycles(runtime: Any, name: str, reps: int) -> list[float]:
    reconciler = runtime.reconcilers[name]
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        outcome = await reconciler.sync(Trigger.MANUAL)
        times.append(time.perf_counter() - t0)
        if outcome.result is not Result.NO_CHANGE:
            raise AssertionError(f"{name}: expected no change, got {outcome.result.value}: {outcome.error}")
    return times


def step_times(reps: int) -> dict[str, list[float]]:
    """The pure steps on their own (no I/O): parse the variables file, walk 1,000 entities, diff, hash."""
    docs = [with_refs(i) for i in range(SIZE)]
    data = json.dumps(variables()).encode()
    live = variables()
    with tempfile.TemporaryDirectory() as tmp:
        hasher = Fingerprinter.from_state_dir(tmp)
    out: dict[str, list[float]] = {"variables file": [], "walk": [], "diff": [], "hashes": []}
    for _ in range(reps):
        t0 = time.perf_counter()
        parsed = parse_variables(data, VARIABLES_FILE)
        t1 = time.perf_counter()
        for doc in docs:
            find_refs(doc, "x")
        t2 = time.perf_counter()
        diff_variables(parsed, live)
        t3 = time.perf_counter()
        for name, value in secret_values().items():
            hasher.fingerprint(name, value)
        t4 = time.perf_counter()
        for key, value in zip(out, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            out[key].append(value)
    return out


async def measure(work: Path, reps: int, polls: int) -> dict[str, Any]:
    WorkRepo.generate(work / "git" / "acme" / "plain.git", 1, SIZE, plain_file)
    WorkRepo.generate(work / "git" / "acme" / "refs.git", 1, SIZE + 1, refs_file)
    plain_node, refs_node = SesamEmulator(jwt=SESAM_JWT), SesamEmulator(jwt=SESAM_JWT)
    plain_node.load(entities(SIZE))
    refs_node.set_env_values(variables())
    refs_node.set_secret_values(secret_values())
    refs_node.load([with_refs(i) for i in range(SIZE)])
    vault = VaultEmulator(token=VAULT_TOKEN)
    for name, value in secret_values().items():
        vault.put(f"bench/{name}", {"value": value})
    servers = [LoopbackServer(plain_node.app).start(), LoopbackServer(refs_node.app).start(),
               LoopbackServer(vault.app).start()]
    configure_logging("warning")
    try:
        with ServerProcess.git(work / "git") as git:
            apps = [app("plain", git.url_for("acme/plain.git"), servers[0].url + "/api", None),
                    app("refs", git.url_for("acme/refs.git"), servers[1].url + "/api", servers[2].url)]
            runtime = build_runtime(Config(service=ServiceSettings(state_dir=work / "state", commit_status=False),
                                           apps=apps))
            try:
                for name in ("plain", "refs"):  # the first sync sends the secrets once (no hash recorded yet)
                    first = await runtime.reconcilers[name].sync(Trigger.MANUAL)
                    if first.result not in (Result.SYNCED, Result.NO_CHANGE):
                        raise AssertionError(f"{name}: first sync {first.result.value}: {first.error}")
                await cycles(runtime, "plain", 2)
                await cycles(runtime, "refs", 2)
                spent: list[float] = []
                timed_steps(runtime.reconcilers["refs"].target, spent)
                plain, refs = [], []
                refs_node.reset_log()
                vault_at_start = len(vault.requests)
                for _ in range(reps):  # interleaved, so load on the machine hits both alike
                    plain += await cycles(runtime, "plain", 1)
                    refs += await cycles(runtime, "refs", 1)
                per_cycle = {"node": sum(1 for r in refs_node.requests if r.path in NODE_PATHS) / reps,
                             "vault": (len(vault.requests) - vault_at_start) / reps}
                if not per_cycle["vault"]:
                    raise AssertionError("the cycles never read Vault: the secrets step did not run")
                refs_node.reset_log()
                vault_before = len(vault.requests)
                for _ in range(polls):
                    outcome = await runtime.reconcilers["refs"].sync(Trigger.POLL)
                    if outcome.result is not Result.NO_CHANGE:
                        raise AssertionError(f"idle poll gave {outcome.result.value}")
                idle_node = sum(1 for r in refs_node.requests if r.path in NODE_PATHS)
                idle_vault = len(vault.requests) - vault_before
            finally:
                await runtime.aclose()
    finally:
        for server in servers:
            server.stop()
    return {"plain": plain, "refs": refs, "idle_node": idle_node, "idle_vault": idle_vault, "polls": polls,
            "per_cycle": per_cycle, "steps": [a + b for a, b in zip(spent[::2], spent[1::2], strict=True)]}


def run(options: Options) -> ScenarioResult:
    result = ScenarioResult("variables", "8. Variables and secrets")
    reps, polls = options.pick((15, 20), (5, 5))
    with tempfile.TemporaryDirectory(prefix="bench-variables-") as tmp:
        data = asyncio.run(measure(Path(tmp), reps, polls))
    steps = step_times(reps)
    plain, refs = Summary.of(data["plain"]), Summary.of(data["refs"])
    added = statistics.median(data["refs"]) - statistics.median(data["plain"])
    table = Table(f"No-change cycle of {SIZE:,} entities (manual sync of an unchanged head), {reps} runs each",
                  ["App", "cycle (median (min–max))"])
    table.add("no variables, no secrets", fmt_summary(plain))
    table.add(f"{VARIABLES} variables, $ENV in every entity, {SECRETS} Vault secrets", fmt_summary(refs))
    steps_in_cycle = Summary.of(data["steps"])
    table.add("time inside the variables and secrets steps, per cycle (measured around them)",
              fmt_summary(steps_in_cycle))
    table.add("difference of the two apps' medians", ms(added))
    table.add("requests of the steps per cycle", f"{data['per_cycle']['node']:g} to /api/env and /api/secrets, "
              f"{data['per_cycle']['vault']:g} to Vault")
    result.tables.append(table)
    parts = Table("The pure steps alone (no I/O), median (min–max)", ["Step", "time"])
    for step, values in steps.items():
        parts.add(step, fmt_summary(Summary.of(values)))
    result.tables.append(parts)
    result.check(f"{SIZE:,} entities: variables and secrets add under 20 ms to a no-change cycle",
                 f"{ms(steps_in_cycle.median)} median inside the steps ({ms(added)} difference of medians)",
                 steps_in_cycle.median < 0.020)
    idle = data["idle_node"] + data["idle_vault"]
    result.check("idle poll: no request to /api/env, /api/secrets or Vault",
                 f"{data['idle_node']} node + {data['idle_vault']} Vault requests in {data['polls']} polls", idle == 0)
    result.notes += [
        "Both apps run in one process against in-process emulators (threads) and one Git server process; "
        "the cycles are interleaved so the machine's load falls on both alike. The difference includes the "
        f"I/O the steps need: GET /api/env, GET /api/secrets and {SECRETS} Vault reads through hvac (each in a "
        "worker thread), plus the emulators' own time to answer them.",
        "The walk over every string value happens when a file is parsed; a drift check of an unchanged tree "
        "reuses the parsed state, so its walk column is paid once per changed file, not per cycle.",
    ]
    return result
