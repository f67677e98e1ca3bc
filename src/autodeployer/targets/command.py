"""Command target: run DEPLOY_COMMAND once per new revision of the SYNC_ROOT subtree.

The "live state" is the SYNC_ROOT tree id of the last successful run, kept in the target memory, so
commits that do not touch SYNC_ROOT never re-run the command and a failed run is retried (with the
scheduler's backoff) until it succeeds. The command runs without a shell unless asked, in a fresh
directory holding the files of SYNC_ROOT at the revision, with a minimal environment: the service's
own secrets (Git token, target tokens) reach it only when listed in COMMAND_PASS_ENV.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from ..config.variables import EnvReader, Frozen, StrictBool, Variable, validate_model
from ..errors import ConfigError, TargetError
from ..logs import get_logger
from ..model import Action, ApplyReport, Change, Health, HealthReport, Plan, Tree
from .base import HealthRequest, SyncContext, TargetDeps

KIND = "command"
SECRET_KEYS: tuple[str, ...] = ()
VARIABLES: tuple[Variable, ...] = (
    Variable("DEPLOY_COMMAND", None, "Command run by the command target in a copy of SYNC_ROOT at each new revision."),
    Variable("COMMAND_SHELL", "false", "Run DEPLOY_COMMAND through /bin/sh instead of splitting it into words."),
    Variable("COMMAND_TIMEOUT", "600", "Seconds DEPLOY_COMMAND may run before its process group is killed."),
    Variable("COMMAND_PASS_ENV", None, "Comma-separated names of environment variables passed on to DEPLOY_COMMAND."),
    Variable("COMMAND_OUTPUT_LIMIT", "65536", "Bytes of DEPLOY_COMMAND output kept in history (the tail is kept)."),
    Variable("HEALTH_COMMAND", None, "Command run like DEPLOY_COMMAND (same environment, COMMAND_SHELL) every "
             "HEALTH_POLL seconds during HEALTH_WINDOW after a deploy: exit code 0 is healthy, any other degraded."),
    Variable("HEALTH_COMMAND_TIMEOUT", "30", "Seconds one HEALTH_COMMAND run may take; longer is degraded."),
)
BASE_ENV = ("PATH", "HOME", "LANG")  # the only part of the service's environment passed by default
KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL of a timed-out command
TAIL_IN_ERROR = 2000  # characters of output quoted in a failure message


def _names(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(dict.fromkeys(str(i).strip() for i in items if str(i).strip()))


class Spec(Frozen):
    kind: Literal["command"] = "command"
    command: str = Field(min_length=1)
    shell: StrictBool = False
    timeout: float = Field(default=600.0, gt=0)
    pass_env: tuple[str, ...] = ()
    output_limit: int = Field(default=65536, ge=1024)
    health_command: str | None = None
    health_timeout: float = Field(default=30.0, gt=0)

    @field_validator("pass_env", mode="before")
    @classmethod
    def _split(cls, value: Any) -> tuple[str, ...]:
        return _names(value)

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.command)


def _checked(spec: Spec, where: str) -> Spec:
    """A command that does not split (unbalanced quotes) is a configuration error, not a failed sync."""
    if not spec.shell:
        try:
            argv = spec.argv
        except ValueError as exc:
            raise ConfigError(f"{where}: cannot split the command: {exc}") from None
        if not argv:
            raise ConfigError(f"{where}: the command is empty")
        if spec.health_command is not None:
            try:
                shlex.split(spec.health_command)
            except ValueError as exc:
                raise ConfigError(f"{where}: cannot split the health command: {exc}") from None
    return spec


def spec_from_env(env: EnvReader, app_name: str | None = None) -> Spec:
    command = env.required("DEPLOY_COMMAND", "the command the command target runs on each new revision")
    limit = env.number("COMMAND_OUTPUT_LIMIT", minimum=1024)
    spec = Spec(
        command=command,
        shell=env.bool("COMMAND_SHELL"),
        timeout=env.number("COMMAND_TIMEOUT", minimum=0.1) or 600.0,
        pass_env=_names(env.str("COMMAND_PASS_ENV")),
        output_limit=int(limit) if limit is not None else 65536,
        health_command=env.str("HEALTH_COMMAND"),
        health_timeout=env.number("HEALTH_COMMAND_TIMEOUT", minimum=0.1) or 30.0,
    )
    return _checked(spec, "DEPLOY_COMMAND")


def spec_from_yaml(data: dict[str, Any], where: str, app_name: str | None = None) -> Spec:
    return _checked(validate_model(Spec, dict(data), where), f"{where}.command")


# --------------------------------------------------------------------------- running
class Output:
    """Combined stdout/stderr, keeping the last `limit` bytes and counting what was dropped."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        excess = len(self.data) - self.limit
        if excess > 0:
            del self.data[:excess]
            self.dropped += excess

    def text(self) -> str:
        text = self.data.decode("utf-8", "replace")
        if self.dropped:
            text = f"[... {self.dropped} earlier bytes of output truncated ...]\n" + text
        return text


def child_env(spec: Spec, ctx: SyncContext, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Minimal environment: PATH, HOME, LANG, the revision variables, and what pass_env lists."""
    environ = dict(os.environ) if environ is None else environ
    env = {k: environ[k] for k in BASE_ENV if k in environ}
    env.setdefault("PATH", os.defpath)
    env.update({k: environ[k] for k in spec.pass_env if k in environ})
    env.update(
        AUTODEPLOYER_REVISION=ctx.tree.revision,
        AUTODEPLOYER_BRANCH=ctx.app.source.branch,
        AUTODEPLOYER_REF=ctx.app.source.ref,  # refs/tags/<TAG> when a tag is followed
        AUTODEPLOYER_REPO=ctx.app.source.url,  # SourceSpec.url never carries credentials
        AUTODEPLOYER_APP=ctx.app.name,
        AUTODEPLOYER_SYNC_ROOT=ctx.app.source.sync_root or "/",
    )
    return env


def _kill_group(proc: asyncio.subprocess.Process, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the whole process group, SIGKILL it if it lingers: children die with the command."""
    _kill_group(proc, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), KILL_GRACE)
    _kill_group(proc, signal.SIGKILL)
    await proc.wait()


async def _pump(stream: asyncio.StreamReader, output: Output) -> None:
    while chunk := await stream.read(65536):
        output.add(chunk)


class CommandTarget:
    kind = KIND

    def __init__(self, spec: Spec, deps: TargetDeps) -> None:
        self.spec = spec
        self.deps = deps

    def _change(self, ctx: SyncContext) -> Change:
        last = ctx.memory.get("tree_id")
        root = ctx.app.source.sync_root or "/"
        text = f"run {self.spec.command!r} for tree {ctx.tree.tree_id[:12]} at {ctx.tree.revision[:12]}"
        if last:
            text += f" (last successful run: tree {str(last)[:12]})"
        return Change(Action.CHANGE if last else Action.ADD, root, "tree", text)

    def prefetch(self) -> None:
        return None  # the plan needs only the tree and the memory of the last run

    async def plan(self, ctx: SyncContext) -> Plan:
        if ctx.tree.tree_id and ctx.memory.get("tree_id") == ctx.tree.tree_id:
            return Plan(desired_count=1, live_count=1)
        return Plan(changes=[self._change(ctx)], desired_count=1, live_count=1 if ctx.memory.get("tree_id") else 0)

    async def apply(self, plan: Plan, ctx: SyncContext) -> ApplyReport:
        if self.deps.source is None:
            raise TargetError("the command target needs the Git source to export the tree")
        log = ctx.log or get_logger(app=ctx.app.name)
        work_root = self.deps.state_dir / "work"
        work_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f"{ctx.app.name}-", dir=work_root) as tmp:
            workdir = Path(tmp)
            await self.deps.source.export(ctx.tree.revision, workdir)
            log.info("running deploy command", revision=ctx.tree.revision[:12], shell=self.spec.shell)
            code, output = await self._run(workdir, child_env(self.spec, ctx))
        text = self.deps.redactor(output.text())
        if code is None:
            raise TargetError(f"command timed out after {self.spec.timeout:g} s; output tail:\n{_tail(text)}")
        if code != 0:
            raise TargetError(f"command exited with code {code}; output tail:\n{_tail(text)}")
        return ApplyReport(
            memory={"tree_id": ctx.tree.tree_id},
            details={"exit_code": 0, "output": text, "output_truncated": output.dropped > 0},
        )

    async def _run(self, workdir: Path, env: dict[str, str], command: str | None = None,
                   timeout: float | None = None) -> tuple[int | None, Output]:
        """(exit code or None on timeout, captured output) of DEPLOY_COMMAND, or of `command`."""
        command = command or self.spec.command
        timeout = timeout or self.spec.timeout
        kwargs: dict[str, Any] = {
            "cwd": str(workdir), "env": env, "stdin": asyncio.subprocess.DEVNULL,
            "stdout": asyncio.subprocess.PIPE, "stderr": asyncio.subprocess.STDOUT, "start_new_session": True,
        }
        try:
            if self.spec.shell:
                proc = await asyncio.create_subprocess_shell(command, **kwargs)
            else:
                proc = await asyncio.create_subprocess_exec(*shlex.split(command), **kwargs)
        except OSError as exc:
            raise TargetError(f"cannot start the command: {exc.strerror or exc}") from None
        output = Output(self.spec.output_limit)
        assert proc.stdout is not None
        pump = asyncio.ensure_future(_pump(proc.stdout, output))
        try:
            code: int | None = await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            code = None
            await _stop(proc)
        except asyncio.CancelledError:
            await _stop(proc)
            raise
        finally:
            # Grandchildren may hold the pipe open; once the group is dead the pump ends.
            if proc.returncode is not None:
                _kill_group(proc, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(pump), KILL_GRACE)
            pump.cancel()
        return code, output

    async def verify(self, plan: Plan, ctx: SyncContext) -> Plan:
        """apply raised on any failure, so reaching verify means the revision is deployed."""
        return Plan(desired_count=1, live_count=1)

    # ------------------------------------------------------------------ health (targets.base.HealthCheck)
    def watches_health(self) -> bool:
        return bool(self.spec.health_command)

    async def health(self, request: HealthRequest) -> HealthReport:
        """HEALTH_COMMAND's exit code, run with the deploy command's environment in an empty directory of
        STATE_DIR/work (it checks the running service, not the files)."""
        if not self.spec.health_command:
            return HealthReport(Health.HEALTHY)
        ctx = SyncContext(request.app, Tree(request.revision, "", {}))
        work_root = self.deps.state_dir / "work"
        work_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f"{request.app.name}-health-", dir=work_root) as tmp:
            code, output = await self._run(Path(tmp), child_env(self.spec, ctx), self.spec.health_command,
                                           self.spec.health_timeout)
        if code == 0:
            return HealthReport(Health.HEALTHY)
        tail = " ".join(self.deps.redactor(output.text()).split())[-300:]
        what = f"timed out after {self.spec.health_timeout:g} s" if code is None else f"exited with code {code}"
        return HealthReport(Health.DEGRADED, (f"HEALTH_COMMAND {what}{': ' + tail if tail else ''}",))

    async def aclose(self) -> None:
        return None


def _tail(text: str) -> str:
    return text[-TAIL_IN_ERROR:] if len(text) > TAIL_IN_ERROR else text


def create(spec: Spec, deps: TargetDeps) -> CommandTarget:
    return CommandTarget(spec, deps)
