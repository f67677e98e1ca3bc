"""Marathon target settings: the ``Spec`` model, its environment variables and the YAML form.

``settings_from_env`` is shared with ``dploy.py``, whose projects set the URL and the label value
their own way but read everything else from the same variables.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import Field, SecretStr

from ...config.variables import EnvReader, Frozen, StrictBool, Variable, validate_model
from ...errors import ConfigError

KIND = "marathon"
DEFAULT_APP_NAME = "autodeployer"
SECRET_KEYS: tuple[str, ...] = ("token", "password")
VARIABLES: tuple[Variable, ...] = (
    Variable("MARATHON_URL", None, "Marathon base URL without /v2 (DC/OS: https://MASTER/service/marathon)."),
    Variable("MARATHON_TOKEN", None, "DC/OS auth token, sent as 'Authorization: token=<t>'.", True),
    Variable("MARATHON_USER", None, "User for HTTP basic auth to Marathon (with MARATHON_PASSWORD)."),
    Variable("MARATHON_PASSWORD", None, "Password for HTTP basic auth to Marathon.", True),
    Variable("MARATHON_FORCE", "false", "Write with force=true: cancel locking deployments instead of waiting."),
    Variable("DEPLOY_TIMEOUT", "300", "Seconds a Marathon deployment may take before the sync fails."),
    Variable("ROLLBACK_ON_FAILURE", "false", "Roll back a Marathon deployment that failed or timed out."),
    Variable("PRUNE", "false", "Delete Marathon apps labelled DPLOY=<APP_NAME> that are no longer in Git."),
    Variable("SPECS_DIR", "specs", "Directory under SYNC_ROOT holding the Marathon app and group *.json files."),
)


class Spec(Frozen):
    kind: Literal["marathon"] = "marathon"
    url: str
    token: SecretStr | None = None
    user: str | None = None
    password: SecretStr | None = None
    verify_tls: StrictBool = True
    force: StrictBool = False
    deploy_timeout: float = Field(default=300.0, gt=0)
    rollback_on_failure: StrictBool = False
    prune: StrictBool = False
    specs_dir: str = "specs"
    app_name: str = Field(default=DEFAULT_APP_NAME, min_length=1)


def normalise_url(value: str) -> str:
    """Scheme added (http, as Marathon listens on 8080), no trailing slash, no /v2."""
    url = value.strip()
    if "://" not in url:
        url = "http://" + url
    url = url.rstrip("/")
    return url.removesuffix("/v2").rstrip("/")


def normalise_token(value: str) -> str:
    """Accept a token pasted with its header form ('token=...') or as 'Bearer ...'; send token= only."""
    token = value.strip().strip('"').strip("'")
    for prefix in ("token=", "bearer "):
        if token.lower().startswith(prefix):
            token = token[len(prefix):].strip()
    return token


def normalise_dir(value: str, where: str) -> str:
    parts = [p for p in PurePosixPath(value.strip() or ".").parts if p not in ("/", ".")]
    if ".." in parts:
        raise ConfigError(f"{where}: must stay inside SYNC_ROOT, got {value!r}")
    return "/".join(parts)


def check_auth_pair(spec: Spec, where: str) -> Spec:
    if bool(spec.user) != bool(spec.password):
        raise ConfigError(f"{where}: basic auth needs both the user and the password")
    return spec


def settings_from_env(env: EnvReader) -> dict[str, Any]:
    """Everything but the URL and the label value: shared by the env form and dploy projects."""
    token = env.secret("MARATHON_TOKEN")
    return {
        "token": SecretStr(normalise_token(token.get_secret_value())) if token else None,
        "user": env.str("MARATHON_USER"),
        "password": env.secret("MARATHON_PASSWORD"),
        "verify_tls": env.bool("VERIFY_TLS"),
        "force": env.bool("MARATHON_FORCE"),
        "deploy_timeout": env.number("DEPLOY_TIMEOUT", minimum=0.1) or 300.0,
        "rollback_on_failure": env.bool("ROLLBACK_ON_FAILURE"),
        "prune": env.bool("PRUNE"),
        "specs_dir": normalise_dir(env.str("SPECS_DIR") or "specs", "SPECS_DIR"),
    }


def spec_from_env(env: EnvReader, app_name: str | None = None) -> Spec:
    url = env.str("MARATHON_URL")
    if not url:
        raise ConfigError("MARATHON_URL is required: the Marathon base URL, e.g. http://marathon.mesos:8080")
    spec = Spec(
        url=normalise_url(url),
        app_name=env.str("APP_NAME") or app_name or DEFAULT_APP_NAME,
        **settings_from_env(env),
    )
    return check_auth_pair(spec, "MARATHON_USER/MARATHON_PASSWORD")


def spec_from_yaml(data: dict[str, Any], where: str, app_name: str | None = None) -> Spec:
    data = dict(data)
    if app_name:
        data.setdefault("app_name", app_name)  # the DPLOY label defaults to the app's name
    if "url" not in data:
        raise ConfigError(f"{where}.url: the Marathon base URL is required")
    data["url"] = normalise_url(str(data["url"]))
    if data.get("token"):
        data["token"] = normalise_token(str(data["token"]))
    data["specs_dir"] = normalise_dir(str(data.get("specs_dir", "specs")), f"{where}.specs_dir")
    return check_auth_pair(validate_model(Spec, data, where), where)

