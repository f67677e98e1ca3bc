"""dploy projects: dploy.app and .pat parsing, repository URLs, and the configuration they become."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from autodeployer.config.dploy import (
    DPLOY_HOOK_PATH,
    dploy_hook_url,
    parse_descriptor,
    parse_repo_url,
    read_dploy,
    read_pat,
)
from autodeployer.errors import ConfigError

from .helpers import MARATHON_TOKEN, base_env

PAT = "ghp_0123456789abcdefghij0123456789abcdefgh"
SEED_EXAMPLE = """\
marathon_url: http://localhost:8080
app_name: mh9test
repo_url: https://github.com/mhausenblas/s4d
public_node: 52.37.239.156
trigger_branch: master
"""


def project(tmp_path: Path, descriptor: str = SEED_EXAMPLE, pat: str | None = PAT + "\n") -> Path:
    directory = tmp_path / "s4d"
    directory.mkdir()
    (directory / "dploy.app").write_text(descriptor)
    if pat is not None:
        (directory / ".pat").write_text(pat)
    return directory


def environ(tmp_path: Path, **extra: str) -> dict[str, str]:
    return base_env(STATE_DIR=str(tmp_path / "state"), **extra)


# --------------------------------------------------------------------------- dploy.app
def test_descriptor_of_the_dploy_docs():
    descriptor, warnings = parse_descriptor(SEED_EXAMPLE)
    assert descriptor.app_name == "mh9test"
    assert descriptor.marathon_url == "http://localhost:8080"
    assert descriptor.repo_url == "https://github.com/mhausenblas/s4d"
    assert descriptor.public_node == "52.37.239.156"
    assert descriptor.trigger_branch == "master"
    assert warnings == []


def test_trigger_branch_defaults_to_dcos_and_unknown_keys_warn():
    descriptor, warnings = parse_descriptor("app_name: shop\nmarathon_url: http://m:8080\nobserver_port: 8888\n")
    assert descriptor.trigger_branch == "dcos"
    assert descriptor.public_node is None and descriptor.repo_url is None
    assert warnings == ["dploy.app: unknown key 'observer_port' ignored"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("app_name: CHANGEME\nmarathon_url: http://localhost:8080\n",
         "app_name is not set (still the CHANGEME placeholder?)"),
        ("marathon_url: http://localhost:8080\n", "app_name is not set"),
        ("app_name: 'has spaces'\n", "app_name: app names use letters"),
        ("- just\n- a list\n", "expected a mapping"),
        ("app_name: [unclosed\n", "invalid YAML"),
    ],
    ids=["placeholder", "missing", "invalid-name", "not-a-mapping", "bad-yaml"],
)
def test_invalid_descriptors(text: str, message: str):
    with pytest.raises(ConfigError) as caught:
        parse_descriptor(text)
    assert message in str(caught.value)


# --------------------------------------------------------------------------- .pat
def test_pat_is_trimmed_and_empty_is_an_error(tmp_path: Path):
    path = tmp_path / ".pat"
    path.write_text(f"  {PAT}\r\n\n")
    assert read_pat(path) == PAT  # dploy sent the newline along with the token
    path.write_text(" \n")
    with pytest.raises(ConfigError, match="the token file is empty"):
        read_pat(path)
    path.write_text("two tokens\n")
    with pytest.raises(ConfigError) as caught:
        read_pat(path)
    assert "two tokens" not in str(caught.value)  # never echoed
    assert read_pat(tmp_path / "missing") is None


# --------------------------------------------------------------------------- repo_url
@pytest.mark.parametrize(
    "url, full_name, https_clone",
    [
        ("https://github.com/mhausenblas/s4d", "mhausenblas/s4d", "https://github.com/mhausenblas/s4d.git"),
        ("https://github.com/mhausenblas/s4d.git/", "mhausenblas/s4d", "https://github.com/mhausenblas/s4d.git"),
        ("http://127.0.0.1:8080/acme/shop.git", "acme/shop", "http://127.0.0.1:8080/acme/shop.git"),
        ("git@github.com:acme/shop.git", "acme/shop", "https://github.com/acme/shop.git"),
        ("ssh://git@ghe.example.com:2222/acme/shop", "acme/shop", "https://ghe.example.com/acme/shop.git"),
        ("https://GHE.Example.com/acme/shop", "acme/shop", "https://ghe.example.com/acme/shop.git"),
    ],
    ids=["https", "https-dotgit-slash", "http-port", "scp-like", "ssh-port", "enterprise"],
)
def test_repo_urls_are_parsed_not_cut(url: str, full_name: str, https_clone: str):
    repo = parse_repo_url(url)
    assert repo.full_name == full_name
    assert repo.clone_url(ssh=False) == https_clone


def test_ssh_repo_url_kept_when_a_deploy_key_is_configured():
    assert parse_repo_url("git@github.com:acme/shop.git").clone_url(ssh=True) == "ssh://git@github.com/acme/shop.git"


@pytest.mark.parametrize("url", ["ftp://github.com/a/b", "github", "https://github.com/only-owner",
                                 "https://user:secret@github.com/a/b"])
def test_bad_repo_urls(url: str):
    with pytest.raises(ConfigError) as caught:
        parse_repo_url(url)
    assert "secret" not in str(caught.value)


# --------------------------------------------------------------------------- the configuration
def test_project_becomes_one_marathon_app(tmp_path: Path):
    env = environ(tmp_path, MARATHON_TOKEN=MARATHON_TOKEN, PRUNE="true", DEPLOY_TIMEOUT="42", PORT="8849")
    built = read_dploy(project(tmp_path), env)
    config = built.config
    [app] = config.apps
    assert app.name == "mh9test"
    assert app.source.url == "https://github.com/mhausenblas/s4d.git"
    assert app.source.branch == "master" and app.source.sync_root == ""
    assert app.source.token is not None and app.source.token.get_secret_value() == PAT
    assert app.source.repo_full_name == "mhausenblas/s4d"
    assert app.source.github_api_url == "https://api.github.com"
    target = app.target
    assert target.kind == "marathon" and target.url == "http://localhost:8080"
    assert target.app_name == "mh9test" and target.specs_dir == "specs"
    assert target.token is not None and target.token.get_secret_value() == MARATHON_TOKEN  # env on top
    assert target.prune is True and target.deploy_timeout == 42
    assert config.service.public_url == "http://52.37.239.156:8849"
    assert dploy_hook_url(config) == "http://52.37.239.156:8849" + DPLOY_HOOK_PATH == "http://52.37.239.156:8849/dploy"
    assert PAT in config.secrets() and PAT not in repr(config)
    assert built.warnings == []


def test_environment_overrides_and_defaults(tmp_path: Path):
    descriptor = "app_name: shop\nmarathon_url: http://localhost:8080\nrepo_url: git@github.com:acme/shop.git\n"
    env = environ(tmp_path, MARATHON_URL="https://master.example.com/service/marathon/",
                  GITHUB_TOKEN="ghp_fromenv123456", PUBLIC_URL="https://deploy.example.com", SPECS_DIR="elsewhere")
    built = read_dploy(project(tmp_path, descriptor), env)
    [app] = built.config.apps
    assert app.source.branch == "dcos"
    assert app.source.url == "https://github.com/acme/shop.git"
    assert app.source.token is not None and app.source.token.get_secret_value() == "ghp_fromenv123456"
    assert app.target.url == "https://master.example.com/service/marathon"
    assert app.target.specs_dir == "specs"  # a dploy constant
    assert dploy_hook_url(built.config) == "https://deploy.example.com/dploy"
    assert any("SSH URL and GIT_SSH_KEY is not set" in w for w in built.warnings)


def test_missing_pieces_are_configuration_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"not found; is .* a dploy project"):
        read_dploy(tmp_path, environ(tmp_path))
    with pytest.raises(ConfigError, match="repo_url is required"):
        read_dploy(project(tmp_path, "app_name: shop\nmarathon_url: http://m:8080\n"), environ(tmp_path))


def test_no_token_at_all_is_a_warning_and_no_hook(tmp_path: Path):
    built = read_dploy(project(tmp_path, SEED_EXAMPLE.replace("public_node: 52.37.239.156\n", ""), pat=None),
                       environ(tmp_path))
    assert built.config.apps[0].source.token is None
    assert dploy_hook_url(built.config) is None
    assert any("no .pat and no GITHUB_TOKEN" in w for w in built.warnings)


def test_committed_pat_is_warned_about(tmp_path: Path):
    directory = project(tmp_path)
    git = ["git", "-C", str(directory), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    assert any(".pat is not in .gitignore" in w for w in read_dploy(directory, environ(tmp_path)).warnings)
    subprocess.run([*git, "add", "dploy.app", ".pat"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "oops"], check=True)
    warnings = read_dploy(directory, environ(tmp_path)).warnings
    assert any(".pat is committed to the Git repository" in w for w in warnings)
    assert all(PAT not in w for w in warnings)
    subprocess.run([*git, "rm", "-q", "--cached", ".pat"], check=True)
    (directory / ".gitignore").write_text(".pat\n")
    assert read_dploy(directory, environ(tmp_path)).warnings == []
