"""Settings: environment variables (one app, the seed's interface) or a YAML file (many apps).

Both forms load into the same :class:`Config`. Every environment variable the code reads is declared
(:func:`all_variables`), which is also the source of the settings table in ``docs/configuration.md``.
Errors are :class:`ConfigError` naming the variable or YAML key, never a traceback.
"""

from __future__ import annotations

import operator
import os
import re
from collections.abc import Callable, Mapping
from functools import reduce
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, BeforeValidator, Field, SecretStr, model_validator

from ..errors import ConfigError
from ..providers.settings import (
    API_HOSTS,
    ENV_NAMES,
    PROVIDER_VARIABLES,
    YAML_KEYS,
    YAML_SECRET_KEYS,
    provider_fields,
    yaml_names,
)
from ..rollout.promotion import DEFAULT_SOAK, check_graph
from ..rollout.windows import Duration, Window, windows_from_json
from ..sources.signatures import mode_value, parse_mode, require_keys, trusted_keys_path
from ..sources.spec import REF_NAME, SourceSpec
from ..targets import TARGETS
from .variables import (
    CORE_VARIABLES,
    EnvReader,
    Frozen,
    StrictBool,
    Variable,
    parse_bool,
    resolve_secret_refs,
    validate_model,
)


def all_variables() -> list[Variable]:
    """Every environment variable autodeployer reads, core first, then each target's."""
    found = list(CORE_VARIABLES)
    found.extend(PROVIDER_VARIABLES)
    for module in TARGETS.values():
        found.extend(module.VARIABLES)
    return found


def settings_table() -> str:
    """The Markdown table of every variable, as published in docs/configuration.md."""
    rows = ["| Variable | Default | Secret | Meaning |", "|---|---|---|---|"]
    for var in all_variables():
        default = f"`{var.default}`" if var.default is not None else ""
        rows.append(f"| `{var.name}` | {default} | {'yes' if var.secret else ''} | {var.help} |")
    return "\n".join(rows)


# --------------------------------------------------------------------------- models
if TYPE_CHECKING:
    TargetSpec = Any  # the union is built from the registry at import time, which a type checker cannot follow
else:
    TargetSpec = Annotated[reduce(operator.or_, (module.Spec for module in TARGETS.values())),
                           Field(discriminator="kind")]


class Policy(Frozen):
    interval: float = Field(default=60.0, gt=0)
    drift_interval: float | None = Field(default=None, ge=0)  # None: max(interval, 60 s); 0: never
    allow_empty: StrictBool = False
    dry_run: StrictBool = False
    # VERIFY_COMMITS: which commits must be signed by a trusted key (sources/signatures.py)
    verify_commits: Annotated[Literal["off", "head", "all"], BeforeValidator(mode_value)] = "off"
    # rollout policy (docs/rollout.md): sync windows, and promotion from another app after a soak
    windows: tuple[Window, ...] = ()
    drift_in_window_only: StrictBool = False  # hold drift repair outside the windows too (default: anytime)
    promote_from: str | None = None
    soak: Duration = DEFAULT_SOAK  # seconds, or 10m, 3s, ...
    health_window: float = Field(default=120.0, ge=0)  # seconds a deploy is watched; 0: not watched
    health_poll: float = Field(default=5.0, gt=0)  # seconds between two looks at the target's health
    rollback_on: Literal["never", "degraded"] = "never"  # roll a degraded deploy back automatically


class AppConfig(Frozen):
    name: str
    source: SourceSpec
    target: TargetSpec
    policy: Policy = Policy()


class ServiceSettings(Frozen):
    state_dir: Path
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    host: str = "0.0.0.0"
    port: int = Field(default=5000, ge=0, le=65535)
    webhook_secret: SecretStr | None = None
    webhook_read_timeout: float = Field(default=30.0, gt=0)
    public_url: str | None = None
    register_webhook: StrictBool = True
    commit_status: StrictBool = True
    admin_token: SecretStr | None = None
    notify_url: SecretStr | None = None
    notify_on: Literal["failures", "all"] = "failures"
    notify_repeat: float = Field(default=3600.0, ge=0)
    store_url: str | None = None  # postgresql://USER@HOST:PORT/DB, never with the password
    store_password: SecretStr | None = None
    replica_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,99}$")
    heartbeat_interval: float = Field(default=2.0, ge=0.1, le=60)
    previews: StrictBool = False  # plan pull requests into an app's branch, comment and post a status
    preview_forks: StrictBool = False  # also pull requests from forks (untrusted content)

    @model_validator(mode="before")
    @classmethod
    def _store_url_without_password(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("store_url"):
            url, password = split_store_url(str(data["store_url"]))
            data = {**data, "store_url": url}
            if password and not data.get("store_password"):
                data["store_password"] = password
        return data


class Config(Frozen):
    service: ServiceSettings
    apps: list[AppConfig]
    notices: tuple[str, ...] = ()  # what start-up logs about how the settings were read (TAG beats BRANCH, ...)

    def app(self, name: str) -> AppConfig:
        for app in self.apps:
            if app.name == name:
                return app
        known = ", ".join(a.name for a in self.apps) or "none"
        raise ConfigError(f"no app named {name!r} (known: {known})")

    def secrets(self) -> list[str]:
        """Every secret value in the configuration, for redaction."""
        found: list[str] = []
        _collect_secrets(self, found)
        return [s for s in found if s]


def _collect_secrets(obj: Any, out: list[str]) -> None:
    if isinstance(obj, SecretStr):
        out.append(obj.get_secret_value())
    elif isinstance(obj, BaseModel):
        for key in type(obj).model_fields:
            _collect_secrets(getattr(obj, key), out)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            _collect_secrets(item, out)


# --------------------------------------------------------------------------- helpers
_APP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def normalise_sync_root(value: str, where: str = "SYNC_ROOT") -> str:
    """'/', '' and './' mean the repository root; '..' is refused."""
    parts = [p for p in PurePosixPath(value.strip() or "/").parts if p not in ("/", ".")]
    if any(p == ".." for p in parts):
        raise ConfigError(f"{where}: must stay inside the repository, got {value!r}")
    return "/".join(parts)


def split_credentials(url: str) -> tuple[str, str | None]:
    """Remove user:token@ from an http(s) URL so it can be logged; returns (url, token)."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and (parts.username or parts.password):
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        token = parts.password or parts.username
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment)), token
    return url, None


def split_store_url(url: str) -> tuple[str, str | None]:
    """STORE_URL without its password (which goes to the driver as a keyword, never into logs)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        raise ConfigError(
            f"STORE_URL: expected postgresql://USER@HOST:PORT/DATABASE, got a {parts.scheme or 'schemeless'} URL"
        )
    if parts.password is None:
        return url.strip(), None
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)), parts.password


def repo_full_name(url: str) -> str | None:
    """owner/name from https, ssh, git, file and scp-like URLs; None if the path is too short."""
    scp_like = re.match(r"^[\w.-]+@[\w.-]+:", url) and "://" not in url  # git@host:owner/repo.git
    path = url.split(":", 1)[1] if scp_like else urlsplit(url).path
    segments = [s for s in path.strip("/").split("/") if s]
    if len(segments) < 2:
        return None
    name = segments[-1].removesuffix(".git")
    return f"{segments[-2]}/{name}"


def repo_host(url: str) -> str | None:
    if re.match(r"^[\w.-]+@[\w.-]+:", url) and "://" not in url:
        return url.split("@", 1)[1].split(":", 1)[0].lower()
    return (urlsplit(url).hostname or "").lower() or None


def github_api_for(url: str, github_url: str, explicit_api: str | None) -> str | None:
    """The REST base for a repository on GitHub (or the explicit GITHUB_API_URL)."""
    if explicit_api:
        return explicit_api.rstrip("/")
    host = repo_host(url)
    gh_host = (urlsplit(github_url).hostname or "github.com").lower()
    if host is None or host != gh_host:
        return None
    if gh_host == "github.com":
        return "https://api.github.com"
    scheme = urlsplit(github_url).scheme or "https"
    return f"{scheme}://{gh_host}/api/v3"


def default_state_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "autodeployer"


# --------------------------------------------------------------------------- environment form
# a Git host's token is a clone token too (GIT_USERNAME goes with it); the first one set is used
HOST_TOKENS = ("GITHUB_TOKEN", "GITLAB_TOKEN", "GITEA_TOKEN", "BITBUCKET_TOKEN")


def source_from_env(env: EnvReader, notices: list[str] | None = None) -> SourceSpec:
    """The source of the environment form; `notices` receives what start-up should log."""
    notices = [] if notices is None else notices
    token_name = next((n for n in HOST_TOKENS if env.secret(n) is not None), "GITHUB_TOKEN")
    token = env.secret(token_name)
    github_url = env.str("GITHUB_URL") or "https://github.com"
    git_url = _one_of(("GIT_URL", env.str("GIT_URL")), ("GIT_REPO", env.str("GIT_REPO")))
    ssh_key, token, token_user = _deploy_credentials(env, token, token_name)
    if git_url:
        where = "GIT_URL" if env.str("GIT_URL") else "GIT_REPO"
        if token_user is not None:
            git_url = _https_for_token(git_url, where, notices)
        git_url = check_local_repository(git_url, where)
        url, embedded = split_credentials(git_url)
        if embedded and token is None:
            token = SecretStr(embedded)
    else:
        user, project = env.str("GITHUB_USER"), env.str("GITHUB_PROJECT")
        if not (user and project):
            raise ConfigError(
                "no repository configured: set GIT_URL (or GIT_REPO), or GITHUB_USER and GITHUB_PROJECT"
            )
        url = f"{github_url.rstrip('/')}/{user}/{project}.git"
    if env.str("DEPLOY_TOKEN") and ssh_key is not None and url.startswith(("http://", "https://")):
        raise ConfigError("DEPLOY_TOKEN is an SSH deploy key, but the repository URL is https: use its ssh URL "
                          "(git@HOST:OWNER/REPO.git), or set GIT_USERNAME to use DEPLOY_TOKEN as an HTTPS access token")
    known_hosts = env.str("GIT_KNOWN_HOSTS")
    if ssh_key is not None and known_hosts is None and _is_ssh(url):
        notices.append(f"GIT_KNOWN_HOSTS is not set: the SSH host key of {repo_host(url)} must be in "
                       "/etc/ssh/ssh_known_hosts, else every fetch is refused (host keys are always checked)")
    tag = env.str("TAG")
    if tag is not None and not REF_NAME.fullmatch(tag):
        raise ConfigError(f"TAG: not a valid tag name: {tag!r}")
    branch = env.str("BRANCH") or "master"
    if tag and env.raw("BRANCH") is not None:
        notices.append(f"TAG is set: following tag {tag!r}, BRANCH={branch} is ignored")
    data: dict[str, Any] = {
        "url": url,
        "branch": branch,
        "tag": tag,
        "sync_root": normalise_sync_root(env.str("SYNC_ROOT") or "/"),
        "token": token,
        "username": token_user or "x-access-token",
        "ssh_key": ssh_key,
        "known_hosts": known_hosts,
        "repo_full_name": repo_full_name(url),
        "github_api_url": github_api_for(url, github_url, env.str("GITHUB_API_URL")),
        "git_timeout": env.number("GIT_TIMEOUT", minimum=1) or 120.0,
        "head_check": _choice(env, "HEAD_CHECK", ("auto", "git", "api")),
        "trusted_keys_file": trusted_keys_path(env.str("TRUSTED_KEYS_FILE"), "TRUSTED_KEYS_FILE"),
    }
    data.update(provider_fields(
        url, repo_host(url), env.str("GIT_PROVIDER"),
        {"gitlab": env.str("GITLAB_API_URL"), "gitea": env.str("GITEA_API_URL"),
         "bitbucket": env.str("BITBUCKET_API_URL")},
        {"gitlab": env.secret("GITLAB_TOKEN"), "gitea": env.secret("GITEA_TOKEN"),
         "bitbucket": env.secret("BITBUCKET_TOKEN")}, data, ENV_NAMES))
    spec: SourceSpec = validate_model(SourceSpec, data, "source")
    return spec


def _is_ssh(url: str) -> bool:
    """ssh://... or the scp-like [user@]host:path that git reads as ssh."""
    return url.startswith("ssh://") or ("://" not in url and local_path(url) is None)


def _one_of(current: tuple[str, str | None], older: tuple[str, str | None]) -> str | None:
    """A variable that has an older name too: either may be set, both only if they agree."""
    (name, value), (alias, other) = current, older
    if value is not None and other is not None and value != other:
        raise ConfigError(f"{name} and {alias} are both set and differ: they mean the same, set one of them")
    return value if value is not None else other


def _deploy_credentials(
    env: EnvReader, token: SecretStr | None, token_name: str = "GITHUB_TOKEN"
) -> tuple[SecretStr | None, SecretStr | None, str | None]:
    """(ssh key, https token, token user) from GIT_SSH_KEY, the Git host's token (`token_name`) and the later
    generations' DEPLOY_TOKEN, which is an SSH deploy key, or with GIT_USERNAME an HTTPS access token."""
    ssh_key, deploy, user = env.secret("GIT_SSH_KEY"), env.secret("DEPLOY_TOKEN"), env.str("GIT_USERNAME")
    if user is not None and not re.fullmatch(r"[^\s:@/]+", user):
        raise ConfigError("GIT_USERNAME: expected a user name (no spaces, ':', '@' or '/')")
    if deploy is None:
        if user is not None and token is None:
            raise ConfigError("GIT_USERNAME is set but no token is: set DEPLOY_TOKEN to the HTTPS access token")
        return ssh_key, token, user
    if user is not None:
        if token is not None and token.get_secret_value() != deploy.get_secret_value():
            raise ConfigError(f"DEPLOY_TOKEN (an access token, as GIT_USERNAME is set) and {token_name} are both "
                              "set and differ: set one of them")
        return ssh_key, deploy, user
    key = _deploy_key(deploy)
    if ssh_key is not None and ssh_key.get_secret_value().strip() != key.get_secret_value().strip():
        raise ConfigError("DEPLOY_TOKEN and GIT_SSH_KEY are both set and differ: they mean the same, set one of them")
    return key, token, None


def _deploy_key(value: SecretStr) -> SecretStr:
    """DEPLOY_TOKEN as a private key; the error never shows the value (it could be a token)."""
    text = value.get_secret_value().strip().replace("\r\n", "\n")  # pasted on Windows: ssh refuses CRs
    if "\n" not in text and "\\n" in text:
        text = text.replace("\\n", "\n")  # a key pasted into a one-line secret, newlines escaped
    if not re.match(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----", text):
        raise ConfigError("DEPLOY_TOKEN: expected the private SSH deploy key text (-----BEGIN ... PRIVATE KEY-----); "
                          "to use an HTTPS access token instead, set GIT_USERNAME too")
    return SecretStr(text)


def _https_for_token(url: str, where: str, notices: list[str]) -> str:
    """The https URL of an ssh or schemeless repository URL, as the github-autodeployer cloned with
    GIT_USERNAME and an access token (git@github.com:acme/cfg.git -> https://github.com/acme/cfg.git)."""
    scp = re.fullmatch(r"(?:[\w.-]+@)?([\w.-]+):(?!//)(.+)", url)
    ssh = re.fullmatch(r"ssh://(?:[^@/]+@)?([^/:]+)(?::\d+)?/(.+)", url)
    bare = re.fullmatch(r"([\w-]+(?:\.[\w-]+)+)/(.+)", url)
    match = ssh or (scp if "://" not in url else None) or bare
    if match is None:
        return url
    https = f"https://{match.group(1)}/{match.group(2).lstrip('/')}"
    notices.append(f"GIT_USERNAME is set: {where} {url} is fetched as {https} with the access token")
    return https


def _choice(env: EnvReader, name: str, allowed: tuple[str, ...]) -> Any:
    value = (env.str(name) or allowed[0]).lower()
    if value not in allowed:
        raise ConfigError(f"{name}: expected one of {', '.join(allowed)}, got {value!r}")
    return value


def _target_module(kind: str, where: str) -> Any:
    module = TARGETS.get(kind.lower())
    if module is None:
        raise ConfigError(f"{where}: unknown target kind {kind!r} (known: {', '.join(TARGETS)})")
    return module


def policy_from_env(env: EnvReader) -> Policy:
    interval = env.number("SYNC_INTERVAL", minimum=0.05) if env.raw("SYNC_INTERVAL") is not None else None
    sleep = env.number("SLEEP_INTERVAL", minimum=0.05)
    if interval is not None and sleep is not None and interval != sleep:
        raise ConfigError("SYNC_INTERVAL and SLEEP_INTERVAL are both set and differ: "
                          "they mean the same, set one of them")
    return Policy(
        interval=interval or sleep or 60.0,
        drift_interval=env.number("DRIFT_INTERVAL", minimum=0),
        allow_empty=env.bool("ALLOW_EMPTY"),
        dry_run=env.bool("DRY_RUN"),
        verify_commits=parse_mode(env.str("VERIFY_COMMITS"), "VERIFY_COMMITS"),
        windows=_env_windows(env),
        drift_in_window_only=env.bool("DRIFT_IN_WINDOW_ONLY"),
        **health_policy_from_env(env),
    )


def _env_windows(env: EnvReader) -> tuple[Window, ...]:
    """SYNC_WINDOWS: a JSON list of windows with the YAML's keys (docs/rollout.md)."""
    text = env.str("SYNC_WINDOWS")
    if not text:
        return ()
    try:
        return windows_from_json(text)
    except ValueError as exc:
        raise ConfigError(f"SYNC_WINDOWS{exc}") from None


def health_policy_from_env(env: EnvReader) -> dict[str, Any]:
    """HEALTH_WINDOW, HEALTH_POLL, ROLLBACK_ON: only those set, so the model's defaults stay in one place."""
    found: dict[str, Any] = {}
    window, poll = env.number("HEALTH_WINDOW", minimum=0), env.number("HEALTH_POLL", minimum=0.05)
    if window is not None:
        found["health_window"] = window
    if poll is not None:
        found["health_poll"] = poll
    rollback = (env.str("ROLLBACK_ON") or "never").strip().lower()
    if rollback not in ("never", "degraded"):
        raise ConfigError(f"ROLLBACK_ON: expected never or degraded, got {rollback!r}")
    found["rollback_on"] = rollback
    return found


# Python's other level names, which the github-autodeployer accepted (logging.getLevelName)
_LOG_LEVEL_ALIASES = {"warn": "warning", "critical": "error", "fatal": "error"}


def service_from_env(env: EnvReader, environ: Mapping[str, str]) -> dict[str, Any]:
    level = (env.str("LOG_LEVEL") or "info").lower()
    level = _LOG_LEVEL_ALIASES.get(level, level)
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"LOG_LEVEL: expected debug, info, warning or error, got {level!r}")
    fmt = (env.str("LOG_FORMAT") or "text").lower()
    if fmt not in ("text", "json"):
        raise ConfigError(f"LOG_FORMAT: expected text or json, got {fmt!r}")
    state = env.str("STATE_DIR")
    port = env.number("PORT", minimum=0)
    if port is not None and (port != int(port) or port > 65535):  # pydantic's message would name service.port
        raise ConfigError(f"PORT: expected a port number from 0 to 65535, got {env.str('PORT')}")
    public_url = env.str("PUBLIC_URL")
    if public_url and not public_url.startswith(("http://", "https://")):
        raise ConfigError(f"PUBLIC_URL: expected an http(s) URL, got {public_url!r}")
    return {
        "webhook_secret": env.secret("WEBHOOK_SECRET"),
        "webhook_read_timeout": env.number("WEBHOOK_READ_TIMEOUT", minimum=0.1) or 30.0,
        "admin_token": env.secret("ADMIN_TOKEN"),
        "notify_url": env.secret("NOTIFY_URL"),
        "notify_on": _choice(env, "NOTIFY_ON", ("failures", "all")),
        "notify_repeat": env.number("NOTIFY_REPEAT", minimum=0) if env.str("NOTIFY_REPEAT") else 3600.0,
        "public_url": public_url.rstrip("/") if public_url else None,
        "register_webhook": env.bool("REGISTER_WEBHOOK"),
        "commit_status": env.bool("COMMIT_STATUS"),
        "state_dir": Path(state).expanduser() if state else default_state_dir(environ),
        "log_level": level,
        "log_format": fmt,
        "host": env.str("HOST") or "0.0.0.0",
        "port": int(port if port is not None else 5000),
        "store_url": env.str("STORE_URL"),
        "store_password": env.secret("STORE_PASSWORD") or _secret_file(env, "STORE_PASSWORD_FILE"),
        "replica_id": env.str("REPLICA_ID"),
        "heartbeat_interval": env.number("HEARTBEAT_INTERVAL", minimum=0.1) or 2.0,
        "previews": env.bool("PREVIEWS"),
        "preview_forks": env.bool("PREVIEW_FORKS"),
    }


def _secret_file(env: EnvReader, name: str) -> SecretStr | None:
    path = env.str(name)
    if path is None:
        return None
    try:
        value = Path(path).expanduser().read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path}: {exc.strerror}") from None
    return SecretStr(value) if value else None


def local_path(url: str) -> Path | None:
    """The directory a repository URL names on this machine (a path or file://), else None.

    As git reads it: `host:path` without a slash before the colon is ssh, not a path."""
    if url.startswith("file://"):
        return Path(urlsplit(url).path)
    if "://" in url or re.match(r"^[^/]*:", url):
        return None
    return Path(url).expanduser()


def check_local_repository(url: str, where: str) -> str:
    """A local repository must exist; the URL comes back absolute, since git runs in STATE_DIR."""
    path = local_path(url)
    if path is None:
        return url
    if not path.is_dir():
        problem = "does not exist" if not path.exists() else "is not a directory"
        raise ConfigError(f"{where}: the local repository {str(path)!r} {problem}")
    return url if url.startswith("file://") else str(path.resolve())


def _derived_name(source: SourceSpec) -> str:
    """APP_NAME's default: the repository's name, made into a valid app name (`my repo` -> `my-repo`)."""
    raw = (source.repo_full_name or "").split("/")[-1] or Path(source.url.rstrip("/")).name
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", raw).lstrip("._-")[:63]
    return name or "app"


def app_from_env(env: EnvReader, notices: list[str] | None = None) -> AppConfig:
    source = source_from_env(env, notices)
    module = _target_module(env.str("TARGET") or "sesam", "TARGET")
    name = env.str("APP_NAME") or _derived_name(source)
    check_app_name(name, "APP_NAME")
    policy = policy_from_env(env)
    require_keys(policy.verify_commits, source.trusted_keys_file, "VERIFY_COMMITS", "TRUSTED_KEYS_FILE")
    return AppConfig(name=name, source=source, target=module.spec_from_env(env, name), policy=policy)


def check_app_name(name: str, where: str) -> None:
    if not _APP_NAME.match(name):
        raise ConfigError(f"{where}: app names use letters, digits, '.', '_' and '-', got {name!r}")


# --------------------------------------------------------------------------- YAML form
def _mapping(raw: Any, where: str) -> dict[str, Any]:
    """A YAML mapping with string keys, else a ConfigError naming where (not the value: a secret?)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {_yaml_kind(raw)}")
    for key in raw:
        if not isinstance(key, str):
            raise ConfigError(f"{where}: keys must be strings, got {_yaml_kind(key)} ({key!r})")
    return raw


def _yaml_kind(value: Any) -> str:
    """'a list', 'a number', ...: what a YAML value is, for error messages."""
    if value is None:
        return "null"
    for types, name in ((bool, "a boolean"), ((int, float), "a number"), (str, "a string"),
                        ((list, tuple), "a list"), (dict, "a mapping")):
        if isinstance(value, types):
            return name
    return f"a {type(value).__name__}"


def _yaml_source(raw: Any, where: str, environ: Mapping[str, str]) -> SourceSpec:
    data = resolve_secret_refs(_mapping(raw, where), where, environ, ("token", "ssh_key", *YAML_SECRET_KEYS))
    hosted = {key: data.pop(key, None) for key in YAML_KEYS}
    github_url = str(data.pop("github_url", "https://github.com"))
    explicit_api = data.pop("github_api_url", None)
    if explicit_api is not None and not isinstance(explicit_api, str):
        raise ConfigError(f"{where}.github_api_url: expected a URL, got {_yaml_kind(explicit_api)}")
    if "url" not in data:
        user, project = data.pop("github_user", None), data.pop("github_project", None)
        if not (user and project):
            raise ConfigError(f"{where}: set url, or github_user and github_project")
        data["url"] = f"{github_url.rstrip('/')}/{user}/{project}.git"
    url, embedded = split_credentials(str(data["url"]))
    data["url"] = url
    if embedded and not data.get("token"):
        data["token"] = embedded
    data["sync_root"] = normalise_sync_root(str(data.get("sync_root", "/")), f"{where}.sync_root")
    if "ref" in data:
        _yaml_ref(data, where)
    if data.get("tag") is not None and "branch" in data:
        raise ConfigError(f"{where}.tag: set tag or branch, not both (a tag is followed instead of a branch)")
    data.setdefault("repo_full_name", repo_full_name(url))
    if "trusted_keys_file" in data:
        data["trusted_keys_file"] = trusted_keys_path(data["trusted_keys_file"], f"{where}.trusted_keys_file")
    data["github_api_url"] = github_api_for(url, github_url, explicit_api)
    data.update(provider_fields(
        url, repo_host(url), _optional_str(hosted["provider"], f"{where}.provider"),
        {h: _optional_str(hosted[f"{h}_api_url"], f"{where}.{h}_api_url") for h in API_HOSTS},
        {h: SecretStr(str(hosted[f"{h}_token"])) if hosted[f"{h}_token"] else None for h in API_HOSTS},
        {**data, "token": SecretStr(str(data["token"])) if data.get("token") else None}, yaml_names(where)))
    spec: SourceSpec = validate_model(SourceSpec, data, where)
    return spec


def _optional_str(value: Any, where: str) -> str | None:
    """A YAML value that must be text when given (a URL, a provider name)."""
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{where}: expected text, got {_yaml_kind(value)}")
    return value


def _yaml_ref(data: dict[str, Any], where: str) -> None:
    """`ref: tags/<name>` (or `heads/<name>`, `refs/...` in full) instead of `tag:` or `branch:`."""
    ref = data.pop("ref")
    if not isinstance(ref, str):
        raise ConfigError(f"{where}.ref: expected tags/NAME or heads/NAME, got {_yaml_kind(ref)}")
    kind, _, name = ref.strip().removeprefix("refs/").partition("/")
    key = {"tags": "tag", "heads": "branch"}.get(kind)
    if key is None or not name:
        raise ConfigError(f"{where}.ref: expected tags/NAME or heads/NAME, got {ref!r}")
    if key in data:
        raise ConfigError(f"{where}.ref: set ref or {key}, not both")
    data[key] = name


def _yaml_target(raw: Any, where: str, environ: Mapping[str, str], app_name: str) -> Any:
    raw = _mapping(raw, where)
    module = _target_module(str(raw.get("kind", "sesam")), f"{where}.kind")
    data = resolve_secret_refs(raw, where, environ, module.SECRET_KEYS)
    data["kind"] = module.KIND
    return module.spec_from_yaml(data, where, app_name)


DOCUMENT_KEYS = ("service", "defaults", "apps")
APP_KEYS = ("name", "source", "target", "policy")


def _known_keys(raw: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    """A misspelt key is an error: ignored, `polcy:` would silently leave the default policy in force."""
    unknown = sorted(key for key in raw if key not in known)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (expected one of: {', '.join(known)})")


def apps_from_yaml(doc: dict[str, Any], environ: Mapping[str, str]) -> list[AppConfig]:
    _known_keys(doc, DOCUMENT_KEYS, "")
    raw_apps = doc.get("apps")
    if not isinstance(raw_apps, list) or not raw_apps:
        raise ConfigError("apps: expected a non-empty list of apps")
    defaults = _mapping(doc.get("defaults") or {}, "defaults")
    _known_keys(defaults, APP_KEYS[1:], "defaults")  # a default name would give every app the same one
    apps: list[AppConfig] = []
    for index, raw in enumerate(raw_apps):
        where = f"apps[{index}]"
        merged = {**defaults, **_mapping(raw, where)}
        _known_keys(merged, APP_KEYS, where)
        name = merged.get("name")
        if isinstance(name, int) and not isinstance(name, bool):
            name = str(name)  # `name: 2024` is a fine name that YAML reads as a number
        if not isinstance(name, str):
            raise ConfigError(f"{where}.name: expected an app name, got {_yaml_kind(name)}")
        check_app_name(name, f"{where}.name")
        where = f"apps[{name}]"
        source = _yaml_source(merged.get("source"), f"{where}.source", environ)
        target = _yaml_target(merged.get("target", {}), f"{where}.target", environ, name)
        policy_data = _mapping(merged.get("policy") or {}, f"{where}.policy")
        policy = validate_model(Policy, dict(policy_data), f"{where}.policy")
        require_keys(policy.verify_commits, source.trusted_keys_file, f"{where}.policy.verify_commits",
                     f"{where}.source.trusted_keys_file")
        apps.append(AppConfig(name=name, source=source, target=target, policy=policy))
    names = [a.name for a in apps]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"apps: duplicate app names: {', '.join(dupes)}")
    problem = check_graph({a.name: a.policy.promote_from for a in apps})
    if problem:
        raise ConfigError(problem)
    return apps


# --------------------------------------------------------------------------- older generations
# Variables of the github-autodeployer generations that are deliberately not supported: each is a
# start-up error naming its replacement, never silently ignored (docs/migrating.md). `value` is the
# variable's value; the check says why it cannot be honoured, or None when it can (VERIFY_SSL=true is
# what autodeployer does anyway).
def _verify_ssl(value: str) -> str | None:
    try:
        if parse_bool(value, "VERIFY_SSL"):
            return None
    except ConfigError:
        pass
    return ("VERIFY_SSL is not supported: autodeployer always verifies TLS certificates; remove VERIFY_SSL, or set "
            "VERIFY_TLS=false to turn verification off on purpose")


UNSUPPORTED: dict[str, Callable[[str], str | None]] = {
    "VERIFY_SSL": _verify_ssl,
}


def check_unsupported(environ: Mapping[str, str]) -> None:
    for name, check in UNSUPPORTED.items():
        value = environ.get(name)
        if value is not None and value.strip():
            problem = check(value.strip())
            if problem:
                raise ConfigError(problem)


def turned_off(environ: Mapping[str, str] | None = None) -> bool:
    """The github-autodeployer's `off` switch: true stops the service at start. Read on its own, before
    the rest of the configuration, so a service switched off while its settings are incomplete stops
    cleanly; a value that is not a boolean is still an error naming `off`."""
    env = EnvReader(os.environ if environ is None else environ, all_variables())
    return env.bool("off")


# --------------------------------------------------------------------------- entry point
def load_config(
    environ: Mapping[str, str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
) -> Config:
    """Build the configuration from a YAML file (if given) or from the environment."""
    environ = os.environ if environ is None else environ
    check_unsupported(environ)
    env = EnvReader(environ, all_variables())
    config_file = config_file or env.str("AUTODEPLOYER_CONFIG")
    service = service_from_env(env, environ)
    if config_file:
        try:
            return _load_yaml(Path(config_file), env, environ, service)
        except ConfigError as exc:
            if str(exc).startswith(f"{config_file}: "):
                raise
            raise ConfigError(f"{config_file}: {exc}") from None  # every YAML error names its file
    notices: list[str] = []
    app = app_from_env(env, notices)
    return Config(service=validate_model(ServiceSettings, service, "service"), apps=[app], notices=tuple(notices))


def _load_yaml(path: Path, env: EnvReader, environ: Mapping[str, str], service: dict[str, Any]) -> Config:
    """The YAML form; the environment's settings (already in `service`) beat the file's."""
    doc = _read_yaml(path)
    overrides = _mapping(doc.get("service") or {}, "service")
    overrides = resolve_secret_refs(overrides, "service", environ, ("webhook_secret", "admin_token", "notify_url",
                                                                 "store_password"))
    for key, value in overrides.items():
        if env.variables.get(key.upper()) is None or env.raw(key.upper()) is None:
            if key == "state_dir":
                if not isinstance(value, str) or not value.strip():
                    got = "an empty string" if isinstance(value, str) else _yaml_kind(value)
                    raise ConfigError(f"service.state_dir: expected a directory path, got {got}")
                value = Path(value).expanduser()
            service[key] = value
    apps = apps_from_yaml(doc, environ)
    return Config(service=validate_model(ServiceSettings, service, "service"), apps=apps)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return doc
