"""Parsing primitives shared by the configuration and by each target's own settings."""

from __future__ import annotations

import builtins  # EnvReader.str shadows the builtin inside the class
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, SecretStr, ValidationError

from ..errors import ConfigError


# --------------------------------------------------------------------------- variables registry
@dataclass(frozen=True)
class Variable:
    name: str
    default: str | None
    help: str
    secret: bool = False


CORE_VARIABLES: tuple[Variable, ...] = (
    # the seed's interface
    Variable("GITHUB_TOKEN", None, "Token for cloning over HTTPS and for the GitHub API.", True),
    Variable("GITHUB_USER", None, "GitHub user or organisation owning the repository."),
    Variable("GITHUB_PROJECT", None, "Name of the repository holding the configuration."),
    Variable("BRANCH", "master", "Branch to follow."),
    Variable("SYNC_ROOT", "/", "Directory of the repository that holds the configuration."),
    # source
    Variable("GIT_URL", None, "Full clone URL (https, ssh, git, file); overrides GITHUB_USER/GITHUB_PROJECT."),
    Variable("GITHUB_URL", "https://github.com", "GitHub web URL (GitHub Enterprise: https://HOST)."),
    Variable("GIT_SSH_KEY", None, "Private SSH deploy key (the key text).", True),
    Variable("GIT_KNOWN_HOSTS", None, "known_hosts lines for SSH host-key checking."),
    Variable("GIT_TIMEOUT", "120", "Seconds a git command may take before it is abandoned."),
    Variable("TAG", None, "Follow this tag instead of a branch (BRANCH is then ignored): a moved or a new tag "
             "deploys."),
    Variable("VERIFY_COMMITS", "off", "off, head (the commit deployed must be signed by a trusted key) or all "
             "(every commit since the live revision too); others are refused, nothing applied."),
    Variable("TRUSTED_KEYS_FILE", None, "File of trusted keys for VERIFY_COMMITS: ASCII-armoured GPG public keys "
             "and/or SSH allowed-signers lines (told apart by content)."),
    # the later github-autodeployer generations' names (docs/migrating.md)
    Variable("GIT_REPO", None, "Clone URL, the later github-autodeployer's name for GIT_URL (both set and "
             "different is an error)."),
    Variable("DEPLOY_TOKEN", None, "The private SSH deploy key text (as GIT_SSH_KEY); with GIT_USERNAME set, "
             "an HTTPS access token for that user instead.", True),
    Variable("GIT_USERNAME", None, "User of the HTTPS access token in DEPLOY_TOKEN (an ssh GIT_REPO is then "
             "fetched over https)."),
    # app and policy
    Variable("APP_NAME", None, "Name of the app (default: the repository name)."),
    Variable("TARGET", "sesam", "Target kind: sesam, marathon or command."),
    Variable("SYNC_INTERVAL", "60", "Poll interval in seconds; fractions allowed."),
    Variable("SLEEP_INTERVAL", None, "The later github-autodeployer's name for SYNC_INTERVAL (both set and "
             "different is an error)."),
    Variable("DRIFT_INTERVAL", None, "Seconds between drift checks of an unchanged head; 0 turns them off "
             "(default: every poll, at most once a minute: max(SYNC_INTERVAL, 60))."),
    Variable("ALLOW_EMPTY", "false", "Allow a sync that removes every pipe and system (or every app)."),
    Variable("DRY_RUN", "false", "Plan and report, never apply."),
    Variable("SYNC_WINDOWS", None, "Sync windows as a JSON list, e.g. "
             "[{\"kind\": \"deny\", \"schedule\": \"0 16 * * FRI\", \"duration\": \"64h\", "
             "\"timezone\": \"Europe/Oslo\"}] (docs/rollout.md)."),
    Variable("DRIFT_IN_WINDOW_ONLY", "false", "Hold drift repair outside the sync windows too (default: anytime)."),
    Variable("HEALTH_WINDOW", "120", "Seconds a synced deploy's health is watched in the background (Marathon tasks, "
             "Sesam pipes, HEALTH_COMMAND); 0 turns the watch off."),
    Variable("HEALTH_POLL", "5", "Seconds between two looks at a deploy's health during HEALTH_WINDOW."),
    Variable("ROLLBACK_ON", "never", "degraded: a deploy that turns degraded within HEALTH_WINDOW is rolled back "
             "to the last healthy revision and the app suspended (never: only recorded and notified)."),
    Variable("VERIFY_TLS", "true", "Verify TLS certificates of targets and GitHub."),
    # service
    Variable("STATE_DIR", None, "Directory for the Git mirror, history and generated secrets."),
    Variable("LOG_LEVEL", "info", "debug, info, warning or error, in any letter case (warn, and critical as "
             "error, too)."),
    Variable("off", "false", "true stops `autodeployer run` at start, with a log line saying why (exit 0): the "
             "github-autodeployer's switch."),
    Variable("LOG_FORMAT", "text", "text or json."),
    Variable("GITHUB_API_URL", None, "GitHub REST base (default https://api.github.com; Enterprise: "
             "https://HOST/api/v3)."),
    Variable("HEAD_CHECK", "auto", "How to read the branch head: git (ls-remote), api (GitHub sha media type), auto."),
    Variable("WEBHOOK_SECRET", None, "Secret of the GitHub webhook (generated and kept in STATE_DIR if unset).", True),
    Variable("WEBHOOK_READ_TIMEOUT", "30", "Seconds a webhook sender has to send its whole body; a slower one gets "
             "408, so a trickling sender cannot hold the memory reserved for reading large signed bodies."),
    Variable("PUBLIC_URL", None, "URL at which the Git host (GitHub, GitLab, Gitea, Bitbucket) reaches this "
             "service; the hook goes to PUBLIC_URL/webhook."),
    Variable("REGISTER_WEBHOOK", "true", "Register the repository webhook at start when PUBLIC_URL and the host's "
             "token (GITHUB_TOKEN, GITLAB_TOKEN, GITEA_TOKEN or BITBUCKET_TOKEN) are set."),
    Variable("COMMIT_STATUS", "true", "Post a commit status for each sync on the Git host (needs its token: "
             "GITHUB_TOKEN, GITLAB_TOKEN, GITEA_TOKEN or BITBUCKET_TOKEN)."),
    Variable("PREVIEWS", "false", "Plan pull requests into an app's branch (their merge result) against the live "
             "target: one comment per app on the PR, a status autodeployer/APP/plan (needs GITHUB_TOKEN; "
             "GitLab merge requests: GITLAB_TOKEN; Gitea/Forgejo: GITEA_TOKEN; Bitbucket Server: BITBUCKET_TOKEN)."),
    Variable("PREVIEW_FORKS", "false", "Also plan pull requests from forks (their content is untrusted; nothing "
             "is ever run for them)."),
    Variable("ADMIN_TOKEN", None, "Bearer token for the API's write endpoints (sync, suspend, resume, rollback); "
             "unset disables them.", True),
    Variable("NOTIFY_URL", None, "URL that receives a JSON POST on failed, refused and recovered syncs (Slack "
             "incoming-webhook URLs get Slack messages).", True),
    Variable("NOTIFY_ON", "failures", "failures (failed, refused, recovered) or all (also every applied sync)."),
    Variable("NOTIFY_REPEAT", "3600", "Seconds before an identical failure is notified again."),
    Variable("HOST", "0.0.0.0", "Address the HTTP server (webhooks, status, API) listens on."),
    Variable("PORT", "5000", "Port of the HTTP server."),
    Variable("AUTODEPLOYER_CONFIG", None, "YAML file describing many apps (same as --config)."),
    # scale-out
    Variable("STORE_URL", None, "postgresql://USER@HOST:PORT/DB puts history, app state and coordination in "
             "PostgreSQL so several replicas share the apps (default: SQLite under STATE_DIR, one replica)."),
    Variable("STORE_PASSWORD", None, "Password for STORE_URL (never put it in the URL).", True),
    Variable("STORE_PASSWORD_FILE", None, "File holding the password for STORE_URL (instead of STORE_PASSWORD)."),
    Variable("REPLICA_ID", None, "Name of this replica in status and history (default: HOSTNAME-PID)."),
    Variable("HEARTBEAT_INTERVAL", "2", "Seconds between a replica's heartbeats; a dead replica's apps are taken "
             "over within max(5, 2 x this)."),
)

_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def parse_bool(value: Any, name: str = "value") -> bool:
    """Strict boolean: true/false/1/0/yes/no in any case, and nothing else."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        low = value.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
    raise ConfigError(f"{name}: expected true/false/1/0/yes/no, got {value!r}")


def _strict_bool(value: Any) -> bool:
    try:
        return parse_bool(value)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


StrictBool = Annotated[bool, BeforeValidator(_strict_bool)]


class Frozen(BaseModel):
    # allow_inf_nan: YAML's .inf and .nan are errors, as inf and nan are in the environment
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def validate_model(model: type[BaseModel], data: dict[str, Any], where: str) -> Any:
    """pydantic validation whose error names the YAML key at fault."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        msg = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":  # pydantic's "Extra inputs are not permitted" names nothing useful
            msg = "unknown key" + (f" (expected one of: {', '.join(model.model_fields)})" if len(first["loc"]) == 1
                                   else "")
        raise ConfigError(f"{where}.{loc}: {msg}" if loc else f"{where}: {msg}") from None


def strip_bearer(token: str) -> str:
    """The official Sesam client accepts 'Bearer xyz' and quoted tokens; so do we."""
    token = token.strip().strip('"').strip("'")
    if token.lower().startswith("bearer "):
        token = token[7:].strip()
    return token


def resolve_secret_refs(
    data: dict[str, Any], where: str, environ: Mapping[str, str], keys: Iterable[str]
) -> dict[str, Any]:
    """`jwt_env: NAME` and `jwt_file: PATH` let a YAML file stay free of secrets."""
    from pathlib import Path

    keys = set(keys)
    out = dict(data)
    for key in list(out):
        if not isinstance(key, str):
            raise ConfigError(f"{where}: keys must be strings, got {key!r}")
        for suffix in ("_env", "_file"):
            if key.endswith(suffix) and key[: -len(suffix)] in keys:
                base = key[: -len(suffix)]
                ref = out.pop(key)
                if not isinstance(ref, str) or not ref.strip():
                    what = "an environment variable name" if suffix == "_env" else "a file path"
                    raise ConfigError(f"{where}.{key}: expected {what}")
                if suffix == "_env":
                    value = environ.get(ref)
                    if not value:
                        raise ConfigError(f"{where}.{key}: environment variable {ref} is not set")
                else:
                    try:
                        value = Path(ref).expanduser().read_text().strip()
                    except OSError as exc:
                        raise ConfigError(f"{where}.{key}: cannot read {ref}: {exc.strerror}") from None
                out[base] = value
    return out


class EnvReader:
    """Typed access to declared environment variables; every error names the variable."""

    def __init__(self, env: Mapping[str, str], variables: Iterable[Variable]):
        self._env = env
        self.variables = {v.name: v for v in variables}

    def raw(self, name: str) -> str | None:
        if name not in self.variables:
            raise AssertionError(f"undeclared variable {name}")  # keeps docs and code in step
        value = self._env.get(name)
        if value is None or value.strip() == "":
            return None
        return value

    def str(self, name: str) -> str | None:
        value = self.raw(name)
        if value is None:
            default = self.variables[name].default
            return default
        return value.strip()

    def required(self, name: builtins.str, why: builtins.str) -> builtins.str:
        value = self.str(name)
        if value is None:
            raise ConfigError(f"{name} is required: {why}")
        return value

    def bool(self, name: builtins.str) -> bool:
        return parse_bool(self.str(name), name)

    def number(self, name: builtins.str, *, minimum: float | None = None) -> float | None:
        value = self.str(name)
        if value is None:
            return None
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
        if not math.isfinite(number):  # inf, nan, 1e400: PORT=inf crashed, SYNC_INTERVAL=inf hung
            raise ConfigError(f"{name}: expected a finite number, got {value!r}")
        if minimum is not None and number < minimum:
            raise ConfigError(f"{name}: must be at least {minimum}, got {value!r}")
        return number

    def secret(self, name: builtins.str) -> SecretStr | None:
        value = self.raw(name)
        return SecretStr(value.strip()) if value is not None else None

    def prefixed(self, prefix: builtins.str) -> dict[builtins.str, builtins.str]:
        """Every non-empty variable whose name starts with `prefix` (``SECRET_<name>``): a family of
        names no registry can list one by one; the prefix itself is declared."""
        if prefix not in self.variables:
            raise AssertionError(f"undeclared variable family {prefix}")
        return {k: v for k, v in self._env.items() if k.startswith(prefix) and len(k) > len(prefix) and v}
