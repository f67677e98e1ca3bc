"""The documentation and the examples tell the truth about the code.

* docs/configuration.md's table is exactly `autodeployer settings` (the variables registry);
* every variable the code reads is declared in that registry, and every declared one is read;
* the examples parse, use only declared variables, and keep their secrets out of the files.

`UPDATE_DOCS=1 python -m pytest tests/test_docs.py` rewrites the table from the registry.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from autodeployer.config import all_variables, load_config, settings_table

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION = ROOT / "docs" / "configuration.md"
START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"
SOURCES = sorted((ROOT / "src" / "autodeployer").rglob("*.py"))

# Reads of a literal upper-case name: EnvReader methods, helpers taking (env, "NAME"), and os.environ.
READS = [
    re.compile(r'\benv\.(?:str|bool|number|secret|raw|required|get)\(\s*"([A-Z][A-Z0-9_]*)"'),
    re.compile(r'\(\s*env\s*,\s*"([A-Z][A-Z0-9_]*)"'),
    re.compile(r'\b(?:os\.)?environ\.get\(\s*"([A-Z][A-Z0-9_]*)"'),
    re.compile(r'\bos\.getenv\(\s*"([A-Z][A-Z0-9_]*)"'),
    re.compile(r'\b(?:os\.)?environ\[\s*"([A-Z][A-Z0-9_]*)"\s*\]'),
]
NOT_SETTINGS = {
    "PATH": "the command target passes the service's PATH on to DEPLOY_COMMAND",
    "HOME": "passed on to DEPLOY_COMMAND; git finds its (ignored) config through it",
    "LANG": "passed on to DEPLOY_COMMAND",
    "XDG_STATE_HOME": "the XDG standard base of the default STATE_DIR",
    "HOSTNAME": "part of the default REPLICA_ID",
    "NO_COLOR": "the terminal convention (no-color.org): the CLI prints no colour",
    "COLUMNS": "the terminal's width, for the CLI's tables",
    "SESAM_EMULATOR_JWT": "the Sesam emulator's own command line (tests and demo), not autodeployer",
    "MARATHON_EMULATOR_TOKEN": "the Marathon emulator's own command line, not autodeployer",
    "GITHUB_EMULATOR_TOKEN": "the GitHub emulator's own command line, not autodeployer",
}


def documented_table() -> str:
    text = CONFIGURATION.read_text()
    assert text.count(START) == 1 and text.count(END) == 1, f"markers missing in {CONFIGURATION}"
    return text.split(START)[1].split(END)[0].strip()


def table_names(table: str) -> list[str]:
    return re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", table, re.MULTILINE)


def code_reads() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in SOURCES:
        text = path.read_text()
        for pattern in READS:
            for match in pattern.finditer(text):
                found.setdefault(match.group(1), set()).add(str(path.relative_to(ROOT)))
    return found


def test_configuration_table_is_the_registry():
    expected = settings_table()
    if os.environ.get("UPDATE_DOCS"):
        text = CONFIGURATION.read_text()
        head, rest = text.split(START)
        CONFIGURATION.write_text(f"{head}{START}\n{expected}\n{END}{rest.split(END)[1]}")
    registry = [v.name for v in all_variables()]
    documented = table_names(documented_table())
    assert len(registry) == len(set(registry)), "a variable is declared twice"
    missing = sorted(set(registry) - set(documented))
    extra = sorted(set(documented) - set(registry))
    assert not missing, f"declared but not documented: {missing}"
    assert not extra, f"documented but not declared: {extra}"
    assert documented_table() == expected, (
        "docs/configuration.md's table differs from `autodeployer settings`; "
        "regenerate it with UPDATE_DOCS=1 python -m pytest tests/test_docs.py"
    )


def test_every_variable_the_code_reads_is_declared_and_every_declared_one_is_read():
    registry = {v.name for v in all_variables()}
    reads = code_reads()
    assert "SYNC_ROOT" in reads and "JWT" in reads  # the scan itself works
    undeclared = {name: sorted(where) for name, where in reads.items()
                  if name not in registry and name not in NOT_SETTINGS}
    assert not undeclared, f"read by the code but not in the registry (so not documented): {undeclared}"
    unread = sorted(registry - set(reads))
    assert not unread, f"documented but never read by the code: {unread}"


def test_every_doc_page_exists_and_links_resolve():
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert {"configuration.md", "targets.md", "webhooks.md", "operations.md", "security.md"} <= pages
    for page in (ROOT / "docs").glob("*.md"):
        for link in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / link).exists(), f"{page.name} links to missing {link}"


# --------------------------------------------------------------------------- examples
def test_sesam_microservice_example():
    system = json.loads((ROOT / "examples" / "sesam-system-autodeployer.json").read_text())
    assert system["type"] == "system:microservice"
    env = system["docker"]["environment"]
    assert system["docker"]["port"] == int(env.get("PORT", 5000))
    assert env["SELF_ID"] == system["_id"]
    declared = {v.name: v for v in all_variables()}
    for name, value in env.items():
        assert name in declared, f"{name} is not an autodeployer variable"
        if declared[name].secret:
            assert re.fullmatch(r"\$SECRET\([\w.-]+\)", value), f"{name} must come from $SECRET(...)"


def test_marathon_example():
    app = json.loads((ROOT / "examples" / "marathon-autodeployer.json").read_text())
    declared = {v.name: v for v in all_variables()}
    for name, value in app["env"].items():
        assert name in declared, f"{name} is not an autodeployer variable"
        if declared[name].secret:
            assert isinstance(value, dict) and value.get("secret") in app["secrets"], f"{name} must be a secret ref"
    assert any(check["path"] == "/healthz" for check in app["healthChecks"])
    assert app["instances"] == 1


def test_apps_yaml_example_loads(tmp_path: Path):
    text = (ROOT / "examples" / "apps.yaml").read_text()
    refs = set(re.findall(r"_env: (\w+)", text))
    files = re.findall(r"_file: (\S+)", text)
    assert refs and not re.search(r"^\s*(token|jwt|password|admin_token|notify_url|webhook_secret):", text, re.MULTILINE)
    for index, path in enumerate(files):
        secret = tmp_path / f"secret-{index}"
        secret.write_text("file-secret-value\n")
        text = text.replace(path, str(secret))
    config_file = tmp_path / "apps.yaml"
    config_file.write_text(text)
    environ = {name: f"value-of-{name.lower()}" for name in refs}
    config = load_config(environ, config_file)
    assert len(config.apps) >= 3 and {a.target.kind for a in config.apps} >= {"sesam", "marathon"}
    assert config.service.admin_token is not None
    assert load_config({**environ, "PORT": "8080"}, config_file).service.port == 8080  # environment wins


@pytest.mark.parametrize("name", ["Dockerfile", ".dockerignore"])
def test_container_files_exist(name: str):
    assert (ROOT / name).is_file()


def test_dockerfile_essentials():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.MULTILINE)
    assert re.search(r"^USER \S+", text, re.MULTILINE) and not re.search(r"^USER (root|0)\b", text, re.MULTILINE)
    for needle in ("git", "ca-certificates", "EXPOSE 5000", "HEALTHCHECK", "/healthz",
                   'ENTRYPOINT ["autodeployer"]', 'CMD ["run"]', "STATE_DIR=/var/lib/autodeployer", "PORT=5000"):
        assert needle in text, needle
