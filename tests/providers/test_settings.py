"""GIT_PROVIDER and the hosts' settings: detection from the URL, required elsewhere, errors that name
the setting, the host's token used for the clone, the same keys in YAML; and the receiving half of
each provider on payloads the emulators do not send (subgroups, deleted branches, tags)."""

from __future__ import annotations

from pathlib import Path

import pytest

from autodeployer.config.loader import load_config
from autodeployer.errors import ConfigError
from autodeployer.providers import PROVIDERS, recognise
from autodeployer.providers.base import Ignored, Malformed, Ping, Push, token_matches
from autodeployer.reviews import ReviewDelivery

BASE = {"JWT": "jwt-value-123456"}
TOKEN = "glpat-SECRET-0a1b2c3d"


def source(**env: str):
    return load_config({**BASE, **env}).apps[0].source


def test_detected_from_well_known_hosts():
    lab = source(GIT_URL="https://gitlab.com/acme/team/cfg.git", GITLAB_TOKEN=TOKEN)
    assert (lab.provider, lab.provider_api_url, lab.repo_full_name) == ("gitlab", "https://gitlab.com/api/v4",
                                                                        "acme/team/cfg")
    assert lab.token is not None and lab.token.get_secret_value() == TOKEN and lab.username == "oauth2"
    assert lab.github_api_url is None
    assert source(GIT_URL="https://github.com/acme/cfg.git").provider == "github"
    assert source(GIT_URL="https://bitbucket.org/ws/cfg.git").provider == "bitbucket"
    assert source(GIT_URL="https://git.example.org/acme/cfg.git").provider is None


def test_self_hosted_needs_git_provider():
    with pytest.raises(ConfigError, match=r"GITEA_TOKEN is set but the host of .* set GIT_PROVIDER=gitea"):
        source(GIT_URL="https://git.example.org/acme/cfg.git", GITEA_TOKEN=TOKEN)
    tea = source(GIT_URL="https://git.example.org/acme/cfg.git", GIT_PROVIDER="gitea", GITEA_TOKEN=TOKEN,
                 GITEA_API_URL="https://git.example.org/api/v1/")
    assert (tea.provider, tea.provider_api_url, tea.username) == ("gitea", "https://git.example.org/api/v1",
                                                                  "x-access-token")
    server = source(GIT_URL="https://bb.example.org/scm/PROJ/cfg.git", GIT_PROVIDER="bitbucket",
                    BITBUCKET_TOKEN=TOKEN, BITBUCKET_API_URL="https://bb.example.org", GIT_USERNAME="deployer")
    assert (server.repo_full_name, server.username) == ("PROJ/cfg", "deployer")


@pytest.mark.parametrize(("env", "message"), [
    ({"GIT_PROVIDER": "sourcehut"}, "GIT_PROVIDER: expected one of github, gitlab, gitea, bitbucket"),
    ({"GIT_PROVIDER": "gitea", "GIT_URL": "https://gitlab.com/a/b.git"}, "GIT_PROVIDER=gitea, but .* gitlab.com"),
    ({"GIT_PROVIDER": "gitea", "GITLAB_API_URL": "https://x/api/v4"},
     "GITLAB_API_URL is set but GIT_PROVIDER is gitea"),
])
def test_errors_name_the_setting(env, message):
    with pytest.raises(ConfigError, match=message):
        source(**{"GIT_URL": "https://git.example.org/a/b.git", **env})


def test_yaml_takes_the_same_keys(tmp_path: Path):
    (tmp_path / "token").write_text(TOKEN + "\n")
    config_file = tmp_path / "apps.yaml"
    config_file.write_text(f"""
apps:
  - name: lab
    source: {{url: "https://lab.example.org/g/s/cfg.git", provider: gitlab,
              gitlab_api_url: "https://lab.example.org/api/v4", gitlab_token_file: "{tmp_path / 'token'}"}}
    target: {{kind: sesam, api_url: "https://a.example", jwt: "jwt-value-123456"}}
  - name: bad
    source: {{url: "https://lab.example.org/g/cfg.git", gitea_api_url: "https://lab.example.org/api/v1"}}
    target: {{kind: sesam, api_url: "https://a.example", jwt: "jwt-value-123456"}}
""")
    message = r"apps\[bad\].source.gitea_api_url is set .* apps\[bad\].source.provider=gitea"
    with pytest.raises(ConfigError, match=message):
        load_config({}, config_file)
    config_file.write_text(config_file.read_text().split("  - name: bad")[0])
    [lab] = load_config({}, config_file).apps
    assert (lab.source.provider, lab.source.repo_full_name) == ("gitlab", "g/s/cfg")
    assert lab.source.token is not None and lab.source.token.get_secret_value() == TOKEN


def test_recognition_prefers_gitea_over_its_github_headers():
    assert recognise({"x-gitea-event": "push", "x-github-event": "push"}).name == "gitea"  # type: ignore[union-attr]
    assert recognise({"x-forgejo-event": "push"}).name == "gitea"  # type: ignore[union-attr]
    assert recognise({"x-gitlab-event": "Push Hook"}).name == "gitlab"  # type: ignore[union-attr]
    assert recognise({"x-event-key": "repo:refs_changed"}).name == "bitbucket"  # type: ignore[union-attr]
    assert recognise({"x-github-event": "push"}).name == "github"  # type: ignore[union-attr]
    assert recognise({"content-type": "application/json"}) is None


def test_payload_edges():
    lab, bb = PROVIDERS["gitlab"], PROVIDERS["bitbucket"]
    deleted = lab.parse("Push Hook", {"object_kind": "push", "ref": "refs/heads/x", "after": "0" * 40,
                                      "project": {"path_with_namespace": "g/s/p"}})
    assert deleted == [Push("g/s/p", "refs/heads/x", "0" * 40, deleted=True)]
    assert isinstance(lab.parse("Push Hook", {"object_kind": "push"}), Malformed)
    assert isinstance(lab.parse("Pipeline Hook", {"object_kind": "pipeline"}), Ignored)
    assert isinstance(bb.parse("diagnostics:ping", {}), Ping)
    assert isinstance(bb.parse("pullrequest:created", {}), Ignored)  # Cloud's: no previews
    assert isinstance(bb.parse("pr:opened", {}), ReviewDelivery)  # Server's: previews (malformed here)
    changes = {"repository": {"slug": "cfg", "project": {"key": "P"}},
               "changes": [{"ref": {"id": "refs/tags/v1"}, "toHash": "a" * 40, "type": "ADD"},
                           {"ref": {"id": "refs/heads/old"}, "toHash": "0" * 40, "type": "DELETE"}]}
    assert bb.parse("repo:refs_changed", changes) == [Push("P/cfg", "refs/tags/v1", "a" * 40),
                                                      Push("P/cfg", "refs/heads/old", "0" * 40, deleted=True)]


def test_token_comparison():
    assert token_matches("s", ["x", "s"]) and not token_matches("", [""]) and not token_matches(None, ["s"])
    assert not token_matches("s ", ["s"])
