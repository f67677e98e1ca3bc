"""The `autodeployer` command line.

Exit codes: 0 in sync (or nothing to do), 1 a dry run/diff found changes, 2 an app was refused or
failed, a sync applied nothing (its store was unreachable), or the input is invalid (one line naming
the flag or variable, never a traceback).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from .. import __version__
from ..config.loader import AppConfig, Config, load_config
from ..errors import AutodeployerError, ConfigError
from ..model import Plan, Result, Status, SyncResult, Trigger
from ..runtime import build_runtime, make_redactor, setup_logging

EXIT_OK, EXIT_CHANGES, EXIT_ERROR = 0, 1, 2


class _Obj:
    def __init__(self, config_file: str | None):
        self.config_file = config_file
        self.dploy_dir: str | None = None  # set by --dploy [DIR]
        self.warnings: list[str] = []
        self._config: Config | None = None

    def config(self) -> Config:
        if self._config is None:
            if self.dploy_dir is not None:
                from ..config.dploy import read_dploy

                project = read_dploy(Path(self.dploy_dir))
                self._config, self.warnings = project.config, list(project.warnings)
            else:
                self._config = load_config(config_file=self.config_file)
                self.warnings.extend(self._config.notices)
        return self._config


def _set_dploy(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.ensure_object(_Obj).dploy_dir = value


_dploy_option = click.option(
    "--dploy", metavar="[DIR]", is_flag=False, flag_value=".", default=None, expose_value=False,
    callback=_set_dploy, help="Use a dploy project (dploy.app and .pat in DIR, default: here) instead of JWT etc.",
)


def _set_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.ensure_object(_Obj).config_file = value


_config_option = click.option(
    "--config", "config_file", metavar="FILE", default=None, expose_value=False, callback=_set_config,
    help="YAML file describing many apps (also accepted before the verb).",
)


def _app_options(command: Any) -> Any:
    """--config and --dploy on every verb that reads the configuration, in either position."""
    return _config_option(_dploy_option(command))


class _Group(click.Group):
    """Lists each verb with its whole first sentence: click cuts summaries at 45 characters."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=1000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _fail(message: str) -> None:
    click.echo(click.style("error: ", fg="red", bold=True) + message, err=True)
    sys.exit(EXIT_ERROR)


def _selected(config: Config, app: str | None) -> list[AppConfig]:
    return [config.app(app)] if app else list(config.apps)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="autodeployer")
@click.option("--config", "config_file", metavar="FILE", envvar="AUTODEPLOYER_CONFIG",
              help="YAML file describing many apps (default: one app from the environment).")
@click.pass_context
def cli(ctx: click.Context, config_file: str | None) -> None:
    """Keep Sesam nodes, Marathon apps or anything with a deploy command equal to Git."""
    ctx.obj = _Obj(config_file)


# --------------------------------------------------------------------------- sync / diff
def _print_plan(plan: Plan, color: bool) -> None:
    for change in plan.changes:
        click.echo(click.style(change.headline(), bold=True) if color else change.headline())
        for line in change.diff.splitlines():
            if color and line.startswith("+") and not line.startswith("+++"):
                line = click.style(line, fg="green")
            elif color and line.startswith("-") and not line.startswith("---"):
                line = click.style(line, fg="red")
            click.echo("    " + line)
    for warning in plan.warnings:
        click.echo(f"warning: {warning}")


def _print_result(result: SyncResult, color: bool) -> None:
    label = result.result.value
    if result.not_applied:  # recorded as no-change, but nothing is known to be in sync
        label = "not applied"
    if color:
        label = click.style(label, fg="red" if result.not_applied else result.result.style, bold=True)
    rev = (result.revision or "")[:12] or "-"
    line = f"{result.app}: {label} at {rev}"
    if result.summary and result.result is not Result.FAILED:
        line += f" ({result.summary})"
    click.echo(line)
    if result.error:
        click.echo(f"  reason: {result.error}")
    for problem in result.problems:
        click.echo(f"  - {problem}")
    for warning in result.warnings:
        click.echo(f"  warning: {warning}")


async def _sync_all(config: Config, apps: Sequence[AppConfig], dry_run: bool, color: bool,
                    override_window: bool = False) -> int:
    runtime = build_runtime(config, apps=apps)
    code = EXIT_OK
    try:
        for reconciler in runtime.reconcilers.values():
            result = await reconciler.sync(Trigger.MANUAL, dry_run=dry_run, force=True,
                                           override_window=override_window)
            if dry_run and result.result is Result.PLANNED:
                click.echo(f"{result.app}: changes planned at {(result.revision or '')[:12]}: {result.summary}")
                click.echo(result.diff)
                code = max(code, EXIT_CHANGES)
            else:
                _print_result(result, color)
            if not result.ok or result.not_applied:
                code = EXIT_ERROR  # exit 0 means "in sync": nothing applied because the store was away is not
    finally:
        await runtime.aclose()
    return code


async def _diff_all(config: Config, apps: Sequence[AppConfig], color: bool) -> int:
    runtime = build_runtime(config, apps=apps)
    code = EXIT_OK
    try:
        for name, reconciler in runtime.reconcilers.items():
            try:
                sha, plan = await reconciler.plan_only()
            except AutodeployerError as exc:
                click.echo(f"{name}: cannot plan: {exc}")
                code = EXIT_ERROR
                continue
            click.echo(f"{name}: {plan.summary()} at {sha[:12]}")
            _print_plan(plan, color)
            if not plan.empty:
                code = max(code, EXIT_CHANGES)
    finally:
        await runtime.aclose()
    return code


def _prepare(ctx: click.Context, *, service: bool = False) -> Config:
    """The configuration, and logging set up for it.

    The human verbs (everything but `run`) print their own lines; log lines would repeat them on
    stderr ("sync finished" after the verb's own line), so they log nothing unless LOG_LEVEL is set."""
    try:
        config: Config = ctx.obj.config()
    except ConfigError as exc:
        _fail(str(exc))
        raise  # unreachable; keeps type checkers happy
    quiet = not service and not os.environ.get("LOG_LEVEL")
    setup_logging(config, make_redactor(config), level="critical" if quiet else None)
    for warning in ctx.obj.warnings:
        if quiet:
            click.echo(f"warning: {warning}", err=True)
        else:
            from ..logs import get_logger

            get_logger().warning("dploy project" if ctx.obj.dploy_dir is not None else "configuration",
                                 warning=warning)
    return config


@cli.command()
@_app_options
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")
@click.option("--app", "app_name", metavar="NAME", help="Only this app.")
@click.option("--override-window", is_flag=True,
              help="Deploy even outside the app's sync windows (recorded as overridden).")
@click.pass_context
def sync(ctx: click.Context, dry_run: bool, app_name: str | None, override_window: bool) -> None:
    """Reconcile each app once, then exit."""
    config = _prepare(ctx)
    try:
        apps = _selected(config, app_name)
    except ConfigError as exc:
        _fail(str(exc))
    sys.exit(asyncio.run(_sync_all(config, apps, dry_run or any(a.policy.dry_run for a in apps), _color(),
                                   override_window)))


@cli.command()
@_app_options
@click.option("--app", "app_name", metavar="NAME", help="Only this app.")
@click.pass_context
def diff(ctx: click.Context, app_name: str | None) -> None:
    """Show what a sync would change, with a readable diff."""
    config = _prepare(ctx)
    try:
        apps = _selected(config, app_name)
    except ConfigError as exc:
        _fail(str(exc))
    sys.exit(asyncio.run(_diff_all(config, apps, _color())))


@cli.command()
@_app_options
@click.option("--app", "app_name", metavar="NAME", help="Only this app.")
@click.option("--revision", metavar="SHA|REF", help="Commit, branch, tag or pull ref (default: the branch head).")
@click.option("--format", "fmt", type=click.Choice(["text", "markdown", "json"]), default="text", show_default=True)
@click.pass_context
def plan(ctx: click.Context, app_name: str | None, revision: str | None, fmt: str) -> None:
    """The plan of a revision against the live target, writing nothing (exit 0 none, 1 changes, 2 refused)."""
    config = _prepare(ctx)
    try:
        apps = _selected(config, app_name)
    except ConfigError as exc:
        _fail(str(exc))
    sys.exit(asyncio.run(_plan_all(config, apps, revision, fmt)))


async def _plan_all(config: Config, apps: Sequence[AppConfig], revision: str | None, fmt: str) -> int:
    from ..plans import plan_revision, render_json, render_markdown, render_text

    runtime = build_runtime(config, apps=apps)
    try:
        reports = [await plan_revision(r, revision) for r in runtime.reconcilers.values()]
    finally:
        await runtime.aclose()
    if fmt == "json":
        click.echo(render_json(reports))
    else:
        for report in reports:
            click.echo(render_markdown(report) if fmt == "markdown" else render_text(report))
    return max((r.exit_code for r in reports), default=0)


@cli.command()
@_app_options
@click.pass_context
def run(ctx: click.Context) -> None:
    """Run the service: poll, serve webhooks and the status page, until SIGTERM."""
    from ..hooks import WEBHOOK_PATH
    from ..serve import serve

    _stop_if_turned_off()
    config = _prepare(ctx, service=True)
    if ctx.obj.dploy_dir is not None:
        from ..config.dploy import DPLOY_HOOK_PATH

        sys.exit(asyncio.run(serve(config, hook_path=DPLOY_HOOK_PATH)))
    sys.exit(asyncio.run(serve(config, hook_path=WEBHOOK_PATH)))


def _stop_if_turned_off() -> None:
    """`off=true` (the github-autodeployer's switch) stops the service before anything else is read."""
    from ..config.loader import turned_off
    from ..logs import configure_logging, get_logger

    try:
        off = turned_off()
    except ConfigError as exc:
        _fail(str(exc))
    if off:
        fmt = (os.environ.get("LOG_FORMAT") or "text").strip().lower()
        configure_logging("info", fmt if fmt in ("text", "json") else "text")
        get_logger().warning("not starting: the environment variable off is true (the service is switched off); "
                             "set off=false or remove it to run")
        sys.exit(EXIT_OK)


@cli.command()
def settings() -> None:
    """List every environment variable with its default and meaning (Markdown)."""
    from ..config.loader import settings_table

    click.echo(settings_table())


# --------------------------------------------------------------------------- operations
_server_option = click.option("--server", metavar="URL", help="Ask a running service instead of the local STATE_DIR.")


def _backend(ctx: click.Context, server: str | None) -> Any:
    from .operations import Backend

    def load() -> Config:
        return _prepare(ctx)

    return Backend(load, server)


@cli.command()
@_app_options
@_server_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status(ctx: click.Context, server: str | None, as_json: bool) -> None:
    """Where every app stands: status, live revision, last sync, next poll."""
    import json

    from .operations import console, print_status

    try:
        rows = _backend(ctx, server).apps()
    except AutodeployerError as exc:
        _fail(str(exc))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        print_status(rows, console())
    sys.exit(EXIT_OK if all(r["status"] in (Status.SYNCED, Status.SUSPENDED) for r in rows) else EXIT_CHANGES)


@cli.command()
@_app_options
@_server_option
@click.option("--app", "app_name", metavar="NAME", help="Only this app.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1), help="How many attempts to show.")
@click.option("--diff/--no-diff", "diffs", default=True, help="Show each sync's diff.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (the API's history rows).")
@click.pass_context
def history(ctx: click.Context, server: str | None, app_name: str | None, limit: int, diffs: bool,
            as_json: bool) -> None:
    """Recent sync attempts, newest first, with their diffs."""
    import json

    from .operations import console, print_history

    try:
        rows = _backend(ctx, server).history(app_name, limit)
    except AutodeployerError as exc:
        _fail(str(exc))
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
    else:
        print_history(rows, console(), diffs)


@cli.command()
@_app_options
@_server_option
@click.option("--app", "app_name", metavar="NAME", required=True)
@click.option("--to", "revision", metavar="SHA", required=True, help="Commit to deploy (full or short sha).")
@click.pass_context
def rollback(ctx: click.Context, server: str | None, app_name: str, revision: str) -> None:
    """Deploy an earlier commit and suspend auto-sync for the app."""
    from .operations import run_action

    run_action(_backend(ctx, server), app_name, "rollback", revision)


@cli.command()
@_app_options
@_server_option
@click.option("--app", "app_name", metavar="NAME", required=True)
@click.pass_context
def suspend(ctx: click.Context, server: str | None, app_name: str) -> None:
    """Stop syncing an app automatically (webhooks and polls are ignored)."""
    from .operations import run_action

    run_action(_backend(ctx, server), app_name, "suspend")


@cli.command()
@_app_options
@_server_option
@click.option("--app", "app_name", metavar="NAME", required=True)
@click.pass_context
def resume(ctx: click.Context, server: str | None, app_name: str) -> None:
    """Follow the branch again and sync now."""
    from .operations import run_action

    run_action(_backend(ctx, server), app_name, "resume")


# --------------------------------------------------------------------------- hooks
@cli.group()
def hooks() -> None:
    """Manage the webhook of each app's repository (GitHub, GitLab, Gitea, Bitbucket Server)."""


def _hook_url(config: Config, dploy: bool) -> str | None:
    """PUBLIC_URL/webhook (or the dploy hook URL); None when PUBLIC_URL is not set."""
    from ..hooks import WEBHOOK_PATH

    public_url = config.service.public_url
    if not public_url:
        return None
    if dploy:
        from ..config.dploy import dploy_hook_url

        return dploy_hook_url(config) or public_url + WEBHOOK_PATH
    return public_url + WEBHOOK_PATH


def _register_secret(config: Config) -> tuple[str, bool, str]:
    """(secret, replace an existing hook's secret?, where the secret comes from).

    Only an explicit WEBHOOK_SECRET may replace the secret of a hook that already exists: the
    service verifies deliveries with its own secret, kept in *its* STATE_DIR, which this process may
    not see. A generated secret is used only for a hook this command creates."""
    from ..serve import webhook_secret

    if config.service.webhook_secret:
        return config.service.webhook_secret.get_secret_value(), True, "WEBHOOK_SECRET"
    return webhook_secret(config), False, f"STATE_DIR {config.service.state_dir}"


async def _hook_command(config: Config, action: str, dploy: bool = False) -> int:
    import httpx

    from ..hooks import hook_targets
    from ..sources.github import GitHubError

    url = _hook_url(config, dploy)
    if url is None and action != "list":
        _fail("PUBLIC_URL (or public_node in dploy.app) is required: the hook is registered for PUBLIC_URL/webhook")
    secret, set_secret, origin = _register_secret(config) if action == "register" else ("", False, "")
    code = EXIT_OK
    async with httpx.AsyncClient(timeout=20, trust_env=False) as http:
        # the same events the service asks for: a register from the CLI never strips what previews need
        events = ("push", "pull_request") if config.service.previews else ("push",)
        targets = hook_targets(config.apps, http, url or "", secret, set_secret=set_secret, events=events)
        if not targets:
            _fail("no app has a repository on a Git host with an API URL and a token (GITHUB_TOKEN, GITLAB_TOKEN, "
                  "GITEA_TOKEN or BITBUCKET_TOKEN); nothing to manage")
        for target in targets:
            try:
                if action == "register":
                    outcome = await target.client.ensure_hook(target.spec)
                    click.echo(f"{target.repo}: hook {outcome.hook.get('id')} {outcome.describe()} -> {url}")
                    if outcome.created or outcome.secret_set:
                        click.echo(f"  secret: from {origin}")
                    else:
                        click.echo("  secret: left as it was (WEBHOOK_SECRET is not set; the service sets its "
                                   "own secret when it starts)")
                elif action == "remove":
                    removed = await target.client.remove_hook(url or "")
                    result = f"removed hook {removed['id']}" if removed else f"no hook for {url}"
                    click.echo(f"{target.repo}: {result}")
                else:
                    _list_hooks(target.repo, await target.client.list_hooks(), url)
            except GitHubError as exc:
                click.echo(f"{target.repo}: {exc}", err=True)
                code = EXIT_ERROR
    return code


def _list_hooks(repo: str, hooks: list[dict[str, Any]], url: str | None) -> None:
    """One line per hook; ours (when PUBLIC_URL says which it is) marked with *."""
    if not hooks:
        click.echo(f"  {repo}: no hooks")
    for hook in hooks:
        cfg = hook.get("config") or {}
        mark = "*" if url and cfg.get("url") == url else " "
        last = (hook.get("last_response") or {}).get("status", "?")
        click.echo(f"{mark} {repo} {hook.get('id')} {cfg.get('url')} "
                   f"events={','.join(hook.get('events', []))} active={hook.get('active')} last={last}")


@hooks.command("register")
@_app_options
@click.pass_context
def hooks_register(ctx: click.Context) -> None:
    """Create or update the hook for PUBLIC_URL/webhook (idempotent)."""
    sys.exit(asyncio.run(_hook_command(_prepare(ctx), "register", ctx.obj.dploy_dir is not None)))


@hooks.command("list")
@_app_options
@click.pass_context
def hooks_list(ctx: click.Context) -> None:
    """List the repositories' hooks; ours (PUBLIC_URL/webhook) is marked with *."""
    sys.exit(asyncio.run(_hook_command(_prepare(ctx), "list", ctx.obj.dploy_dir is not None)))


@hooks.command("remove")
@_app_options
@click.pass_context
def hooks_remove(ctx: click.Context) -> None:
    """Delete exactly our hook, leaving every other hook alone."""
    sys.exit(asyncio.run(_hook_command(_prepare(ctx), "remove", ctx.obj.dploy_dir is not None)))


@cli.command()
@click.option("--port", default=5000, show_default=True, type=click.IntRange(0, 65535),
              help="Port of the deployer's status page.")
@click.option("--interval", default=2.0, show_default=True, help="Poll interval of the demo app, seconds.")
@click.option("--dir", "workdir", type=click.Path(file_okay=False), help="Where to put the demo repository.")
def demo(port: int, interval: float, workdir: str | None) -> None:
    """Run against a local demo: a Git repository and an emulated Sesam node on loopback."""
    from ..demo import run_demo

    sys.exit(run_demo(port=port, interval=interval, workdir=workdir))


def _color() -> bool:
    """Colour on a terminal, unless NO_COLOR is set to anything (https://no-color.org)."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def main(argv: Sequence[str] | None = None) -> Any:
    """The entry point: every operational error ends as one line and exit code 2, never a traceback.

    Errors raised inside the event loop (a store that cannot open, a driver that cannot be imported, a
    busy PORT) reach this point; they carry the variable or flag that explains them."""
    try:
        return cli.main(args=list(argv) if argv is not None else None, prog_name="autodeployer",
                        standalone_mode=False)
    except (KeyboardInterrupt, click.exceptions.Abort):
        sys.exit(130)
    except click.exceptions.Exit as exc:  # --help, --version
        sys.exit(exc.exit_code)
    except click.UsageError as exc:  # click's own form is four lines; keep to one, with where to look
        where = exc.ctx.command_path if exc.ctx else "autodeployer"
        _fail(f"{exc.format_message().rstrip('.')} (see '{where} --help')")
    except click.ClickException as exc:
        _fail(exc.format_message())
    except AutodeployerError as exc:
        _fail(str(exc))
    except OSError as exc:  # e.g. a file the command needs, named by the OS error
        where = f"{exc.filename}: " if exc.filename else ""
        _fail(f"{where}{exc.strerror or exc}")


if __name__ == "__main__":
    main()
