"""Configuration: strict parsing, the seed's variables, YAML, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from autodeployer.config.loader import load_config, normalise_sync_root, repo_full_name, split_credentials
from autodeployer.config.variables import parse_bool
from autodeployer.errors import ConfigError

BASE = {"GITHUB_USER": "acme", "GITHUB_PROJECT": "cfg", "JWT": "jwt-value-123456"}


@pytest.mark.parametrize("text", ["true", "TRUE", "True", "1", "yes", "YES", " yes "])
def test_true_spellings(text):
    assert parse_bool(text, "X") is True


@pytest.mark.parametrize("text", ["false", "FALSE", "0", "no", "No"])
def test_false_spellings(text):
    assert parse_bool(text, "X") is False


@pytest.mark.parametrize("text", ["flase", "on", "off", "y", "n", "2", "", "truee"])
def test_anything_else_is_refused_naming_the_variable(text):
    with pytest.raises(ConfigError, match="SESAM_FORCE: expected true/false/1/0/yes/no"):
        load_config({**BASE, "SESAM_FORCE": text or " x"})


def test_seed_defaults():
    config = load_config(BASE)
    [app] = config.apps
    assert app.source.url == "https://github.com/acme/cfg.git"
    assert app.source.branch == "master" and app.source.sync_root == ""
    assert app.target.api_url == "http://sesam-node:9042/api"
    assert app.policy.interval == 60 and not app.target.force
    assert app.source.github_api_url == "https://api.github.com"
    assert app.name == "cfg"


def test_enterprise_and_git_url_overrides():
    config = load_config({**BASE, "GITHUB_URL": "https://ghe.example.org", "SYNC_INTERVAL": "0.5"})
    app = config.apps[0]
    assert app.source.url == "https://ghe.example.org/acme/cfg.git"
    assert app.source.github_api_url == "https://ghe.example.org/api/v3"
    assert app.policy.interval == 0.5
    other = load_config({**BASE, "GIT_URL": "git@gitlab.example.org:team/node.git"}).apps[0]
    assert other.source.url == "git@gitlab.example.org:team/node.git" and other.source.github_api_url is None
    assert other.source.repo_full_name == "team/node"


def test_credentials_in_git_url_are_moved_out_of_it():
    url, token = split_credentials("https://x-access-token:sekrit-123@github.com/acme/cfg.git")
    assert url == "https://github.com/acme/cfg.git" and token == "sekrit-123"
    app = load_config({**BASE, "GIT_URL": "https://u:tok-abc-123@host.example/a/b.git"}).apps[0]
    assert "tok-abc-123" not in app.source.url and app.source.token.get_secret_value() == "tok-abc-123"


def test_sync_root_normalisation():
    assert normalise_sync_root("/") == ""
    assert normalise_sync_root("/sesam-home/node/") == "sesam-home/node"
    assert normalise_sync_root("./a//b") == "a/b"
    with pytest.raises(ConfigError):
        normalise_sync_root("a/../../etc")


def test_sesam_url_and_bearer_prefix_normalised():
    app = load_config({**BASE, "SESAM_API_URL": "datahub-1.sesam.cloud/", "JWT": "Bearer abc.def.ghi"}).apps[0]
    assert app.target.api_url == "https://datahub-1.sesam.cloud/api"
    assert app.target.jwt.get_secret_value() == "abc.def.ghi"


def test_repo_full_name_forms():
    assert repo_full_name("https://github.com/o/r.git") == "o/r"
    assert repo_full_name("ssh://git@github.com/o/r") == "o/r"
    assert repo_full_name("git@github.com:o/r.git") == "o/r"
    assert repo_full_name("file:///srv/git/o/r.git") == "o/r"


def test_secrets_are_collected_for_redaction_and_hidden_in_repr():
    config = load_config({**BASE, "GITHUB_TOKEN": "ghp_tok_123456", "WEBHOOK_SECRET": "hook-secret-1"})
    assert {"ghp_tok_123456", "jwt-value-123456", "hook-secret-1"} <= set(config.secrets())
    assert "ghp_tok_123456" not in repr(config) and "jwt-value-123456" not in str(config.apps[0])


def test_yaml_file(tmp_path: Path):
    (tmp_path / "jwt").write_text("file-jwt-123456\n")
    config_file = tmp_path / "apps.yaml"
    config_file.write_text(f"""
service: {{state_dir: {tmp_path / 'state'}, port: 6000}}
defaults:
  source: {{url: "https://github.com/acme/cfg.git", token_env: TOKEN}}
  policy: {{interval: 5}}
apps:
  - name: a
    target: {{kind: sesam, api_url: "https://a.example/api", jwt_env: JWT_A}}
  - name: b
    source: {{url: "https://github.com/acme/other.git", branch: main, sync_root: node}}
    target: {{kind: sesam, api_url: "https://b.example", jwt_file: "{tmp_path / 'jwt'}", force: yes}}
""")
    config = load_config({"TOKEN": "tok-123456", "JWT_A": "jwt-a-123456"}, config_file)
    a, b = config.apps
    assert config.service.port == 6000 and a.policy.interval == 5
    assert a.source.token.get_secret_value() == "tok-123456"
    assert b.target.jwt.get_secret_value() == "file-jwt-123456" and b.target.force is True
    assert b.source.branch == "main" and b.source.sync_root == "node" and b.target.api_url == "https://b.example/api"
    # the environment beats the file
    assert load_config({"TOKEN": "t-123456", "JWT_A": "j-123456", "PORT": "7000"}, config_file).service.port == 7000


@pytest.mark.parametrize(
    "body, message",
    [
        ("apps: []", "apps: expected a non-empty list"),
        ("apps: [{name: x, source: {url: u}, target: {kind: nope}}]",
         "apps[x].target.kind: unknown target kind 'nope'"),
        ("apps: [{name: x, source: {url: u}, target: {jwt: abcdefgh, force: flase}}]", "apps[x].target.force"),
        ("apps: [{name: x, source: {url: u}, target: {jwt_env: MISSING}}]", "environment variable MISSING is not set"),
        ("apps: [{name: 'bad name', source: {url: u}}]", "app names use letters"),
        ("apps: [{name: x, source: {url: u}, target: {jwt: abcdefgh}}, "
         "{name: x, source: {url: u}, target: {jwt: abcdefgh}}]",
         "duplicate app names: x"),
        ("apps: [ {name: x", "invalid YAML"),
    ],
)
def test_yaml_errors_name_the_key(tmp_path: Path, body: str, message: str):
    config_file = tmp_path / "apps.yaml"
    config_file.write_text(body)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        load_config({}, config_file)


# --------------------------------------------------------------------------- regressions (issue 8 reliability suite)
ENV = {"GIT_URL": "http://127.0.0.1:1/acme/config.git", "JWT": "jwt-value-123", "STATE_DIR": "/tmp/x"}


@pytest.mark.parametrize("value", ["inf", "-inf", "Infinity", "nan", "NaN", "1e400"])
@pytest.mark.parametrize("name", ["PORT", "SYNC_INTERVAL", "DRIFT_INTERVAL", "GIT_TIMEOUT", "SESAM_TIMEOUT",
                                  "NOTIFY_REPEAT", "HEARTBEAT_INTERVAL"])
def test_non_finite_numbers_are_refused_naming_the_variable(name: str, value: str):
    with pytest.raises(ConfigError, match=f"^{name}: expected a finite number, got '{value}'$"):
        load_config({**ENV, name: value})


def test_finite_numbers_still_work():
    config = load_config({**ENV, "PORT": "8080", "SYNC_INTERVAL": "0.5", "GIT_TIMEOUT": "1e3"})
    assert config.service.port == 8080 and config.apps[0].policy.interval == 0.5
    assert config.apps[0].source.git_timeout == 1000.0
    with pytest.raises(ConfigError, match=r"^SYNC_INTERVAL: must be at least 0.05"):
        load_config({**ENV, "SYNC_INTERVAL": "0.01"})


APP = "{name: a, source: {url: 'http://h/a/b.git'}, target: {jwt: jjjjjjjj}"


def test_numeric_yaml_app_name_is_a_name(tmp_path: Path):
    config_file = tmp_path / "apps.yaml"
    config_file.write_text(f"apps: [{APP.replace('name: a', 'name: 2024')}}}]")
    assert load_config({}, config_file).apps[0].name == "2024"


@pytest.mark.parametrize("body, message", [
    (f"apps: [{APP}, policy: [1, 2]}}]", "apps[a].policy: expected a mapping, got a list"),
    (f"apps: [{APP}, policy: {{1: 2}}}}]", "apps[a].policy: keys must be strings, got a number (1)"),
    (f"apps: [{APP}, policy: {{interval: .inf}}}}]", "apps[a].policy.interval: Input should be a finite number"),
    (f"defaults: x\napps: [{APP}}}]", "defaults: expected a mapping, got a string"),
    (f"defaults: [1]\napps: [{APP}}}]", "defaults: expected a mapping, got a list"),
    (f"defaults: {{1: {{}}}}\napps: [{APP}}}]", "defaults: keys must be strings, got a number (1)"),
    (f"apps: [{APP}, 5: 1}}]", "apps[0]: keys must be strings, got a number (5)"),
    ("apps: [{name: a, source: {url: 'http://h/a/b.git', 1: 2}, target: {jwt: jjjjjjjj}}]",
     "apps[a].source: keys must be strings, got a number (1)"),
    ("apps: [{name: a, source: {url: 'http://h/a/b.git'}, target: {jwt: jjjjjjjj, null: 2}}]",
     "apps[a].target: keys must be strings, got null (None)"),
    ("apps: [{name: a, source: {url: 'http://h/a/b.git'}, target: {jwt_env: [X]}}]",
     "apps[a].target.jwt_env: expected an environment variable name"),
    ("apps: [{name: a, source: {url: 'http://h/a/b.git', token_file: null}, target: {jwt: jjjjjjjj}}]",
     "apps[a].source.token_file: expected a file path"),
    ("apps: [{name: a, source: {url: 'http://h/a/b.git', github_api_url: 5}, target: {jwt: jjjjjjjj}}]",
     "apps[a].source.github_api_url: expected a URL, got a number"),
    (f"service: {{state_dir: 5}}\napps: [{APP}}}]", "service.state_dir: expected a directory path, got a number"),
    (f"service: {{state_dir: [a]}}\napps: [{APP}}}]", "service.state_dir: expected a directory path, got a list"),
    (f"service: {{1: 2}}\napps: [{APP}}}]", "service: keys must be strings, got a number (1)"),
    (f"service: [1]\napps: [{APP}}}]", "service: expected a mapping, got a list"),
    (f"service: {{port: .inf}}\napps: [{APP}}}]", "service.port: Input should be a finite number"),
    # misspelt keys were ignored (the default policy silently stayed in force)
    (f"apps: [{APP}, polcy: {{interval: 5}}}}]",
     "apps[0].polcy: unknown key (expected one of: name, source, target, policy)"),
    (f"defaults: {{polcy: {{}}}}\napps: [{APP}}}]",
     "defaults.polcy: unknown key (expected one of: source, target, policy)"),
    (f"defaults: {{name: x}}\napps: [{APP}}}]", "defaults.name: unknown key (expected one of: source, target, policy)"),
    (f"servic: {{port: 1}}\napps: [{APP}}}]", "servic: unknown key (expected one of: service, defaults, apps)"),
    # `name: null` became an app named "None"
    ("apps: [{name: null, source: {url: 'http://h/a/b.git'}, target: {jwt: jjjjjjjj}}]",
     "apps[0].name: expected an app name, got null"),
    ("apps: [{source: {url: 'http://h/a/b.git'}, target: {jwt: jjjjjjjj}}]",
     "apps[0].name: expected an app name, got null"),
    ("apps: [{name: [a], source: {url: 'http://h/a/b.git'}, target: {jwt: jjjjjjjj}}]",
     "apps[0].name: expected an app name, got a list"),
])
def test_yaml_shape_errors_name_the_key(tmp_path: Path, body: str, message: str):
    """These raised TypeError/AttributeError (a traceback at start-up) before."""
    config_file = tmp_path / "apps.yaml"
    config_file.write_text(body)
    with pytest.raises(ConfigError) as error:
        load_config({}, config_file)
    assert str(error.value) == f"{config_file}: {message}"


@pytest.mark.parametrize("body, message", [
    ("apps: [{name: a, source: {url: 'http://h/a/b.git', brnch: main}, target: {jwt: jjjjjjjj}}]",
     "apps[a].source.brnch: unknown key (expected one of: url, branch, sync_root, "),
    ("apps: [{name: a, source: {url: 'http://h/a/b.git'}, target: {jwt: jjjjjjjj, api_ulr: x}}]",
     "apps[a].target.api_ulr: unknown key (expected one of: kind, "),
    (f"service: {{prot: 5}}\napps: [{APP}}}]", "service.prot: unknown key (expected one of: state_dir, "),
    (f"apps: [{APP}, policy: {{intervl: 5}}}}]", "apps[a].policy.intervl: unknown key (expected one of: interval, "),
])
def test_yaml_errors_in_one_style(tmp_path: Path, body: str, message: str):
    """The file, the key path and the allowed keys; never pydantic's own wording."""
    config_file = tmp_path / "apps.yaml"
    config_file.write_text(body)
    with pytest.raises(ConfigError) as error:
        load_config({}, config_file)
    assert str(error.value).startswith(f"{config_file}: {message}"), str(error.value)
    assert "Extra inputs" not in str(error.value)


@pytest.mark.parametrize("value", ["99999", "70000", "80.5"])
def test_port_out_of_range_names_port(value: str):
    with pytest.raises(ConfigError, match=f"^PORT: expected a port number from 0 to 65535, got {value}$"):
        load_config({**ENV, "PORT": value})


def test_local_git_url_that_does_not_exist_names_git_url(tmp_path: Path):
    for url in (str(tmp_path / "missing"), f"file://{tmp_path}/missing", "./no-such-repo"):
        with pytest.raises(ConfigError, match=r"^GIT_URL: the local repository .* does not exist$"):
            load_config({**ENV, "GIT_URL": url})
    (tmp_path / "a file").write_text("")
    with pytest.raises(ConfigError, match=r"^GIT_URL: .* is not a directory$"):
        load_config({**ENV, "GIT_URL": str(tmp_path / "a file")})


def test_local_git_url_gives_a_valid_app_name_and_an_absolute_path(tmp_path: Path, monkeypatch):
    (tmp_path / "my config").mkdir()
    (tmp_path / ".hidden").mkdir()
    app = load_config({**ENV, "GIT_URL": str(tmp_path / "my config")}).apps[0]
    assert app.name == "my-config"
    assert load_config({**ENV, "GIT_URL": str(tmp_path / ".hidden")}).apps[0].name == "hidden"
    monkeypatch.chdir(tmp_path)
    assert load_config({**ENV, "GIT_URL": "my config"}).apps[0].source.url == str(tmp_path / "my config")
    with pytest.raises(ConfigError, match=r"^APP_NAME: "):  # an explicit bad name is still named
        load_config({**ENV, "GIT_URL": str(tmp_path / "my config"), "APP_NAME": "bad name"})


# --------------------------------------------------------------------------- the later generations' variables
KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA-SECRET-KEY\n-----END OPENSSH PRIVATE KEY-----"


def test_git_repo_is_git_url_and_both_differing_is_an_error_naming_both():
    app = load_config({**BASE, "GIT_REPO": "git@github.com:acme/cfg.git", "DEPLOY_TOKEN": KEY}).apps[0]
    assert app.source.url == "git@github.com:acme/cfg.git" and app.source.repo_full_name == "acme/cfg"
    same = {**BASE, "GIT_REPO": "https://h.example/a/b.git", "GIT_URL": "https://h.example/a/b.git"}
    assert load_config(same).apps[0].source.url == "https://h.example/a/b.git"
    with pytest.raises(ConfigError, match=r"^GIT_URL and GIT_REPO are both set and differ"):
        load_config({**same, "GIT_REPO": "https://h.example/a/c.git"})


def test_deploy_token_is_the_ssh_key_and_never_in_an_error():
    app = load_config({**BASE, "GIT_REPO": "git@github.com:acme/cfg.git", "DEPLOY_TOKEN": KEY}).apps[0]
    assert app.source.ssh_key.get_secret_value() == KEY and app.source.token is None
    escaped = KEY.replace("\n", "\\n")  # a key pasted into a one-line secret
    app = load_config({**BASE, "GIT_REPO": "git@github.com:acme/cfg.git", "DEPLOY_TOKEN": escaped}).apps[0]
    assert app.source.ssh_key.get_secret_value() == KEY
    crlf = load_config({**BASE, "GIT_REPO": "git@github.com:acme/cfg.git", "DEPLOY_TOKEN": KEY.replace("\n", "\r\n")})
    assert crlf.apps[0].source.ssh_key.get_secret_value() == KEY
    for env, message in [
        ({"DEPLOY_TOKEN": "ghp_notakey-SECRET"}, "DEPLOY_TOKEN: expected the private SSH deploy key text"),
        ({"DEPLOY_TOKEN": KEY, "GIT_SSH_KEY": KEY + "x"}, "DEPLOY_TOKEN and GIT_SSH_KEY are both set and differ"),
        ({"DEPLOY_TOKEN": KEY, "GIT_REPO": "https://github.com/acme/cfg.git"},
         "DEPLOY_TOKEN is an SSH deploy key, but the repository URL is https"),
    ]:
        with pytest.raises(ConfigError, match=message) as info:
            load_config({**BASE, "GIT_REPO": "git@github.com:acme/cfg.git", **env})
        assert "SECRET" not in str(info.value)


def test_deploy_token_with_git_username_is_an_https_token_for_that_user():
    config = load_config({**BASE, "GIT_REPO": "git@github.com:acme/cfg.git", "DEPLOY_TOKEN": "ghp_tok-SECRET",
                          "GIT_USERNAME": "robot"})
    source = config.apps[0].source
    assert source.url == "https://github.com/acme/cfg.git"  # as upstream: ssh URLs are fetched over https
    assert source.token.get_secret_value() == "ghp_tok-SECRET" and source.username == "robot"
    assert source.ssh_key is None and "ghp_tok-SECRET" not in source.url
    assert any("fetched as https://github.com/acme/cfg.git" in n for n in config.notices)
    assert "ghp_tok-SECRET" in config.secrets()  # redacted wherever it could appear
    schemeless = load_config({**BASE, "GIT_REPO": "github.com/acme/cfg.git", "DEPLOY_TOKEN": "t-SECRET",
                              "GIT_USERNAME": "robot"}).apps[0].source
    assert schemeless.url == "https://github.com/acme/cfg.git"
    with pytest.raises(ConfigError, match=r"DEPLOY_TOKEN .* and GITHUB_TOKEN are both set and differ"):
        load_config({**BASE, "DEPLOY_TOKEN": "a-SECRET", "GIT_USERNAME": "robot", "GITHUB_TOKEN": "b-SECRET"})
    with pytest.raises(ConfigError, match=r"DEPLOY_TOKEN .* and GITLAB_TOKEN are both set and differ") as raised:
        load_config({**BASE, "DEPLOY_TOKEN": "a-SECRET", "GIT_USERNAME": "robot", "GITLAB_TOKEN": "c-SECRET"})
    assert "SECRET" not in str(raised.value)  # named, never shown
    with pytest.raises(ConfigError, match="GIT_USERNAME is set but no token is"):
        load_config({**BASE, "GIT_USERNAME": "robot"})
    with pytest.raises(ConfigError, match="GIT_USERNAME: expected a user name"):
        load_config({**BASE, "GIT_USERNAME": "a b", "DEPLOY_TOKEN": "t"})


def test_tag_beats_branch_with_a_notice():
    config = load_config({**BASE, "TAG": "v1.2", "BRANCH": "main"})
    source = config.apps[0].source
    assert source.tag == "v1.2" and source.ref == "refs/tags/v1.2"
    assert config.notices == ("TAG is set: following tag 'v1.2', BRANCH=main is ignored",)
    assert load_config({**BASE, "TAG": "v1.2"}).notices == ()
    assert load_config(BASE).apps[0].source.ref == "refs/heads/master"
    with pytest.raises(ConfigError, match=r"^TAG: not a valid tag name"):
        load_config({**BASE, "TAG": "v1 ..2"})


def test_sleep_interval_is_sync_interval():
    assert load_config({**BASE, "SLEEP_INTERVAL": "30"}).apps[0].policy.interval == 30
    assert load_config({**BASE, "SLEEP_INTERVAL": "30", "SYNC_INTERVAL": "30.0"}).apps[0].policy.interval == 30
    with pytest.raises(ConfigError, match=r"^SYNC_INTERVAL and SLEEP_INTERVAL are both set and differ"):
        load_config({**BASE, "SLEEP_INTERVAL": "30", "SYNC_INTERVAL": "5"})
    with pytest.raises(ConfigError, match=r"^SLEEP_INTERVAL: expected a number"):
        load_config({**BASE, "SLEEP_INTERVAL": "often"})


@pytest.mark.parametrize("text, level", [("DEBUG", "debug"), ("Info", "info"), ("WARNING", "warning"),
                                         ("WARN", "warning"), ("ERROR", "error"), ("CRITICAL", "error")])
def test_log_level_in_any_case(text: str, level: str):
    assert load_config({**BASE, "LOG_LEVEL": text}).service.log_level == level


def test_verify_ssl_false_is_refused_naming_the_replacement():
    with pytest.raises(ConfigError, match=r"^VERIFY_SSL is not supported: .*VERIFY_TLS=false"):
        load_config({**BASE, "VERIFY_SSL": "false"})
    with pytest.raises(ConfigError, match=r"^VERIFY_SSL is not supported"):
        load_config({**BASE, "VERIFY_SSL": "maybe"})
    assert load_config({**BASE, "VERIFY_SSL": "true"}).apps  # what autodeployer does anyway


def test_off_is_a_strict_boolean():
    from autodeployer.config.loader import turned_off

    assert turned_off({"off": "true"}) and turned_off({"off": "TRUE"}) and not turned_off({})
    assert not turned_off({"off": "false"})
    with pytest.raises(ConfigError, match=r"^off: expected true/false"):
        turned_off({"off": "yep"})


def test_yaml_ref_tags_and_tag(tmp_path: Path):
    def source(body: str):
        path = tmp_path / "apps.yaml"
        path.write_text(f"apps: [{{name: a, source: {{url: 'http://h/a/b.git', {body}}}, target: {{jwt: jjjjjjjj}}}}]")
        return load_config({}, path).apps[0].source

    assert source("ref: tags/v2").tag == "v2" and source("ref: refs/tags/v2").ref == "refs/tags/v2"
    assert source("tag: v3").ref == "refs/tags/v3"
    assert source("ref: heads/main").ref == "refs/heads/main"
    for body, message in [("ref: v2", "source.ref: expected tags/NAME or heads/NAME"),
                          ("ref: tags/v2, tag: v3", "source.ref: set ref or tag, not both"),
                          ("tag: v2, branch: main", "source.tag: set tag or branch, not both"),
                          ("tag: 'a b'", "source.tag: not a valid tag name")]:
        with pytest.raises(ConfigError, match=message):
            source(body)


def test_off_stops_the_service_at_start_with_a_reason(tmp_path: Path):
    from .helpers import base_env, run_cli

    # nothing else configured: a switched-off service does not need a complete configuration
    done = run_cli(base_env(off="true", STATE_DIR=str(tmp_path)), "run", timeout=30)
    assert done.returncode == 0, done.stderr
    assert "not starting: the environment variable off is true" in done.stdout + done.stderr
    bad = run_cli(base_env(off="ja", STATE_DIR=str(tmp_path)), "run", timeout=30)
    assert bad.returncode == 2 and "off: expected true/false/1/0/yes/no" in bad.stderr


def test_an_ssh_key_without_known_hosts_gets_a_start_up_notice():
    env = {**BASE, "GIT_REPO": "git@github.com:acme/cfg.git", "DEPLOY_TOKEN": KEY}
    [notice] = load_config(env).notices
    assert notice.startswith("GIT_KNOWN_HOSTS is not set: the SSH host key of github.com must be in")
    assert load_config({**env, "GIT_KNOWN_HOSTS": "github.com ssh-ed25519 AAAA"}).notices == ()
