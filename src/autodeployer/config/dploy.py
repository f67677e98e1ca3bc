"""dploy compatibility: serve a dploy project (``dploy.app``, ``.pat``, ``specs/*.json``) unchanged.

A dploy workspace becomes one app: the repository ``repo_url`` at ``trigger_branch`` (default
``dcos``), deployed from ``specs/`` to the Marathon at ``marathon_url`` with apps labelled
``DPLOY=<app_name>`` (the label dploy itself used, so existing apps stay ours). Everything else comes
from the environment exactly as in the environment form, which also applies on top: MARATHON_URL
overrides ``marathon_url`` (dploy's localhost default assumed an SSH tunnel), GITHUB_TOKEN is
preferred over ``.pat``, PUBLIC_URL over ``public_node``.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from ..errors import ConfigError
from ..logs import get_logger
from ..targets.marathon import spec as marathon
from .loader import (
    AppConfig,
    Config,
    ServiceSettings,
    all_variables,
    check_app_name,
    policy_from_env,
    service_from_env,
    source_from_env,
)
from .variables import EnvReader, validate_model

DESCRIPTOR = "dploy.app"
PAT_FILE = ".pat"
PLACEHOLDER = "CHANGEME"
DEFAULT_BRANCH = "dcos"
SPECS_DIR = "specs"
DPLOY_HOOK_PATH = "/dploy"
KNOWN_KEYS = ("marathon_url", "app_name", "repo_url", "public_node", "trigger_branch")
_SCP_LIKE = re.compile(r"^(?:(?P<user>[\w.-]+)@)?(?P<host>[\w.-]+):(?P<path>(?!//)[^\\]+)$")


@dataclass(frozen=True)
class Descriptor:
    """The keys of ``dploy.app``; ``app_name`` is never the placeholder."""

    app_name: str
    marathon_url: str | None = None
    repo_url: str | None = None
    public_node: str | None = None
    trigger_branch: str = DEFAULT_BRANCH


@dataclass(frozen=True)
class RepoURL:
    """A repository URL taken apart properly (dploy cut a fixed-length prefix)."""

    scheme: str  # https, http or ssh (scp-like forms are ssh)
    host: str  # with :port when one was given
    path: str  # "owner/name" or longer, without .git
    user: str | None = None  # ssh user

    @property
    def full_name(self) -> str:
        return "/".join(self.path.split("/")[-2:])

    def clone_url(self, ssh: bool) -> str:
        """The URL git fetches: SSH only when a deploy key is configured, else HTTPS with the token."""
        if self.scheme == "ssh" and ssh:
            return f"ssh://{self.user + '@' if self.user else ''}{self.host}/{self.path}.git"
        scheme = "https" if self.scheme == "ssh" else self.scheme
        host = self.host.split(":")[0] if self.scheme == "ssh" else self.host  # an SSH port is not an HTTPS port
        return f"{scheme}://{host}/{self.path}.git"


@dataclass
class DployProject:
    directory: Path
    descriptor: Descriptor
    config: Config
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- parsing
def parse_repo_url(value: str) -> RepoURL:
    """https, http and ssh URLs and scp-like ``git@host:owner/repo``, each with optional ``.git``."""
    text = value.strip()
    if "://" in text:
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        if scheme not in ("https", "http", "ssh"):
            raise ConfigError(f"{DESCRIPTOR}: repo_url: unsupported scheme {parts.scheme!r} in {value!r}")
        if scheme != "ssh" and (parts.username or parts.password):
            raise ConfigError(f"{DESCRIPTOR}: repo_url must not carry credentials; the token belongs in {PAT_FILE}")
        host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
        user, path = parts.username if scheme == "ssh" else None, parts.path
    elif match := _SCP_LIKE.match(text):
        scheme, host, user, path = "ssh", match["host"], match["user"], match["path"]
    else:
        raise ConfigError(f"{DESCRIPTOR}: repo_url is not a repository URL: {value!r}")
    segments = [s for s in path.strip("/").split("/") if s]
    if segments:
        segments[-1] = segments[-1].removesuffix(".git")
    if not host or len(segments) < 2 or not all(segments):
        raise ConfigError(f"{DESCRIPTOR}: repo_url needs a host, an owner and a repository name: {value!r}")
    return RepoURL(scheme=scheme, host=host.lower(), path="/".join(segments), user=user)


def _text(value: Any, key: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        raise ConfigError(f"{DESCRIPTOR}: {key}: expected a single value")
    text = str(value).strip()
    return text or None


def parse_descriptor(text: str) -> tuple[Descriptor, list[str]]:
    """The mapping in ``dploy.app``; unknown keys are warnings, the CHANGEME placeholder is unset."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{DESCRIPTOR}: invalid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{DESCRIPTOR}: expected a mapping of {', '.join(KNOWN_KEYS)}")
    warnings = [f"{DESCRIPTOR}: unknown key {key!r} ignored" for key in doc if key not in KNOWN_KEYS]
    values = {key: _text(doc.get(key), key) for key in KNOWN_KEYS}
    app_name = values["app_name"]
    if app_name is None or app_name == PLACEHOLDER:
        raise ConfigError(f"{DESCRIPTOR}: app_name is not set (still the {PLACEHOLDER} placeholder?)")
    check_app_name(app_name, f"{DESCRIPTOR}: app_name")
    descriptor = Descriptor(
        app_name=app_name,
        marathon_url=values["marathon_url"],
        repo_url=values["repo_url"],
        public_node=values["public_node"],
        trigger_branch=values["trigger_branch"] or DEFAULT_BRANCH,
    )
    return descriptor, warnings


def read_pat(path: Path) -> str | None:
    """The token in ``.pat``, surrounding whitespace removed (dploy kept the newline); None if absent."""
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ConfigError(f"{path}: cannot read the token file: {reason}") from None
    token = raw.strip()
    if not token:
        raise ConfigError(f"{path}: the token file is empty")
    if any(c.isspace() for c in token):
        raise ConfigError(f"{path}: expected one token, found whitespace inside it")
    return token


def _git(directory: Path, *args: str) -> int | None:
    """Exit code of a read-only git query in `directory`; None when git cannot answer."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    try:
        return subprocess.run(["git", "-C", str(directory), *args], capture_output=True, timeout=10, env=env,
                              check=False).returncode
    except (OSError, subprocess.SubprocessError):
        return None


def pat_warnings(directory: Path) -> list[str]:
    """A committed token is readable by anyone who can read the repository: say so."""
    if not (directory / PAT_FILE).exists() or _git(directory, "rev-parse", "--is-inside-work-tree") != 0:
        return []
    if _git(directory, "ls-files", "--error-unmatch", "--", PAT_FILE) == 0:
        return [(f"{PAT_FILE} is committed to the Git repository: revoke that token, remove the file from Git "
                 "and prefer GITHUB_TOKEN from the environment or a mounted file")]
    if _git(directory, "check-ignore", "-q", "--", PAT_FILE) == 1:
        return [f"{PAT_FILE} is not in .gitignore: it could be committed by accident"]
    return []


def public_url_for(public_node: str, port: int) -> str:
    """dploy's observer listened on the public agent; the hook goes to http://<public_node>:<PORT>."""
    node = public_node.strip().rstrip("/")
    if "://" in node:
        return node
    if node.count(":") > 1 and not node.startswith("["):
        node = f"[{node}]"  # a bare IPv6 address
    return f"http://{node}" if re.search(r":\d+$", node) else f"http://{node}:{port}"


# --------------------------------------------------------------------------- the project
def read_dploy(directory: Path, environ: Mapping[str, str] | None = None) -> DployProject:
    """Build the configuration of the dploy project in `directory`, with the warnings found."""
    environ = os.environ if environ is None else environ
    directory = Path(directory)
    try:
        text = (directory / DESCRIPTOR).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{directory / DESCRIPTOR}: not found; is {directory} a dploy project?") from None
    except OSError as exc:
        raise ConfigError(f"{directory / DESCRIPTOR}: cannot read: {exc.strerror}") from None
    descriptor, warnings = parse_descriptor(text)
    warnings += pat_warnings(directory)

    merged = dict(environ)
    merged.update(BRANCH=descriptor.trigger_branch, SYNC_ROOT="/")
    if descriptor.repo_url:
        repo = parse_repo_url(descriptor.repo_url)
        merged["GIT_URL"] = repo.clone_url(ssh=bool(environ.get("GIT_SSH_KEY")))
        if repo.scheme == "ssh" and not environ.get("GIT_SSH_KEY"):
            warnings.append(f"{DESCRIPTOR}: repo_url is an SSH URL and GIT_SSH_KEY is not set; cloning over HTTPS")
    elif not environ.get("GIT_URL"):
        raise ConfigError(f"{DESCRIPTOR}: repo_url is required (the GitHub repository to watch)")
    pat = read_pat(directory / PAT_FILE)
    if not environ.get("GITHUB_TOKEN"):
        if pat:
            merged["GITHUB_TOKEN"] = pat
        else:
            warnings.append(
                f"no {PAT_FILE} and no GITHUB_TOKEN: the repository must be public and no webhook is registered")
    env = EnvReader(merged, all_variables())

    marathon_url = env.str("MARATHON_URL") or descriptor.marathon_url
    if not marathon_url:
        raise ConfigError(f"{DESCRIPTOR}: marathon_url is required (or set MARATHON_URL)")
    target = marathon.check_auth_pair(
        marathon.Spec(
            url=marathon.normalise_url(marathon_url),
            app_name=descriptor.app_name,
            **{**marathon.settings_from_env(env), "specs_dir": SPECS_DIR},
        ),
        "MARATHON_USER/MARATHON_PASSWORD",
    )
    app = AppConfig(name=descriptor.app_name, source=source_from_env(env), target=target, policy=policy_from_env(env))

    service = service_from_env(env, environ)
    if descriptor.public_node and not service["public_url"]:
        service["public_url"] = public_url_for(descriptor.public_node, service["port"])
    config = Config(service=validate_model(ServiceSettings, service, "service"), apps=[app])
    return DployProject(directory=directory, descriptor=descriptor, config=config, warnings=warnings)


def load_dploy(directory: Path, environ: Mapping[str, str] | None = None) -> Config:
    """The Config of a dploy project; its warnings are logged (never the token)."""
    project = read_dploy(directory, environ)
    log = get_logger(component="dploy")
    for warning in project.warnings:
        log.warning("dploy project", warning=warning)
    return project.config


def dploy_hook_url(config: Config) -> str | None:
    """Where GitHub delivers pushes for a dploy project: the path dploy's observer used."""
    public_url = config.service.public_url
    return public_url.rstrip("/") + DPLOY_HOOK_PATH if public_url else None
