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
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from autodeployer.config.loader import all_variables, load_config, settings_table

from .helpers import base_env, run_cli

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION = ROOT / "docs" / "configuration.md"
START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"
SOURCES = sorted((ROOT / "src" / "autodeployer").rglob("*.py"))

# Reads of a literal upper-case name: EnvReader methods, helpers taking (env, "NAME"), and os.environ.
READS = [
    # `off` is the one lower-case name: the github-autodeployer's switch, kept as it was spelt
    re.compile(r'\benv\.(?:str|bool|number|secret|raw|required|get|prefixed)\(\s*"([A-Z][A-Z0-9_]*|off)"'),
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
    "VAULT_EMULATOR_TOKEN": "the Vault emulator's own command line, not autodeployer",
    "VAULT_EMULATOR_GITHUB_TOKEN": "the Vault emulator's own command line, not autodeployer",
}


def documented_table() -> str:
    text = CONFIGURATION.read_text()
    assert text.count(START) == 1 and text.count(END) == 1, f"markers missing in {CONFIGURATION}"
    return text.split(START)[1].split(END)[0].strip()


def table_names(table: str) -> list[str]:
    return re.findall(r"^\| `([A-Z][A-Z0-9_]*|off)` \|", table, re.MULTILINE)


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
    secret_key = r"^\s*(token|jwt|password|admin_token|notify_url|webhook_secret):"
    assert refs and not re.search(secret_key, text, re.MULTILINE)
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


# --------------------------------------------------------------------------- every example in docs/ and examples/
DOC_PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def fenced(*languages: str) -> list[tuple[str, str]]:
    """(page:line, text) of every fenced block in one of these languages."""
    blocks = []
    for page in DOC_PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            if match.group(1) in languages:
                blocks.append((f"{page.name}:{text[:match.start()].count(chr(10)) + 1}", match.group(2)))
    return blocks


def dockerfile_instruction(name: str) -> list[str]:
    """The exec form of ENTRYPOINT or CMD in the Dockerfile."""
    match = re.search(rf"^{name} (\[.*\])\s*$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert match, f"Dockerfile has no exec-form {name}"
    return json.loads(match.group(1))


def cli_help(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(base_env(), *args, "--help", timeout=60)


def check_invocation(argv: list[str], where: str) -> None:
    """argv (a container's command line) is a valid `autodeployer` invocation: its verb's --help answers."""
    assert argv and argv[0] == "autodeployer", f"{where}: runs {argv[:1]}, not autodeployer"
    answer = cli_help(*argv[1:])
    assert answer.returncode == 0 and "Usage: autodeployer" in answer.stdout, f"{where}: {argv}: {answer.stderr}"


@pytest.mark.parametrize("where,text", fenced("yaml", "json"), ids=lambda v: v if ":" in str(v) else "")
def test_yaml_and_json_blocks_parse(where: str, text: str):
    doc = yaml.safe_load(text) if not text.lstrip().startswith("{") else json.loads(text)
    assert isinstance(doc, dict) and doc, where


def test_shell_blocks_are_valid_shell_and_name_real_verbs_and_flags():
    blocks = fenced("bash", "sh")
    assert len(blocks) >= 8
    used: dict[tuple[str, ...], set[str]] = {}
    for where, text in blocks:
        syntax = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
        assert syntax.returncode == 0, f"{where}: {syntax.stderr}"
        for line in text.replace("\\\n", " ").splitlines():
            words = [w.strip("[]") for w in shlex.split(line, comments=True)]
            if "autodeployer" not in words:
                continue
            words = words[words.index("autodeployer") + 1:]
            words = words[:words.index("&&")] if "&&" in words else words
            verb = tuple(w for w in words if re.fullmatch(r"[a-z]+", w))[:2]
            used.setdefault(verb, set()).update(w.split("=")[0] for w in words if w.startswith("--"))
    assert ("sync",) in {v[:1] for v in used} and ("hooks", "list") in used, used
    for verb, flags in used.items():
        answer = cli_help(*verb)
        if answer.returncode != 0 and len(verb) == 2:  # the second word was an argument, not a subcommand
            answer = cli_help(verb[0])
        assert answer.returncode == 0, f"autodeployer {' '.join(verb)}: {answer.stderr}"
        for flag in flags:
            assert re.search(rf"{re.escape(flag)}\b", answer.stdout), f"autodeployer {' '.join(verb)} has no {flag}"


def test_compose_example_runs_the_image_correctly(tmp_path: Path):
    """docs/scale-out.md's compose file: each deployer's command, after the image's ENTRYPOINT, is a valid
    invocation, its environment uses declared variables only, and it loads examples/apps.yaml."""
    [(where, text)] = [(w, t) for w, t in fenced("yaml") if "services:" in t]
    compose = yaml.safe_load(text)
    entrypoint, default_cmd = dockerfile_instruction("ENTRYPOINT"), dockerfile_instruction("CMD")
    declared = {v.name for v in all_variables()}
    deployers = {name: svc for name, svc in compose["services"].items() if "autodeployer" in svc.get("image", "")}
    assert len(deployers) == 3
    for name, svc in deployers.items():
        command = svc.get("command", default_cmd)
        check_invocation([*entrypoint, *command], f"{where} {name}")
        unknown = set(svc["environment"]) - declared
        assert not unknown, f"{where} {name}: not autodeployer variables: {unknown}"
    # Run what can run here: the configuration the replica would load (secret files in tmp_path).
    svc = deployers["deployer-1"]
    config_path = svc["command"][svc["command"].index("--config") + 1]
    mounts = dict(reversed(v.split(":")[:2]) for v in svc["volumes"])
    assert mounts[config_path] == "./apps.yaml"
    environ = {k: str(v).replace("/run/secrets/", f"{tmp_path}/") for k, v in svc["environment"].items()}
    (tmp_path / "store_password").write_text("pg-password\n")
    apps_yaml = (ROOT / "examples" / "apps.yaml").read_text()
    for index, path in enumerate(re.findall(r"_file: (\S+)", apps_yaml)):
        (tmp_path / f"secret-{index}").write_text("file-secret-value\n")
        apps_yaml = apps_yaml.replace(path, str(tmp_path / f"secret-{index}"))
    (tmp_path / "apps.yaml").write_text(apps_yaml)
    environ.update({ref: "value" for ref in re.findall(r"_env: (\w+)", apps_yaml)})
    config = load_config(environ, tmp_path / "apps.yaml")
    assert config.service.store_url and config.service.store_url.startswith("postgresql://autodeployer@postgres")
    assert config.service.store_password is not None


def test_marathon_example_of_scale_out_runs_autodeployer():
    [(where, text)] = [(w, t) for w, t in fenced("json") if '"instances": 3' in t]
    app = json.loads(text)
    assert "autodeployer" in app["container"]["docker"]["image"]
    check_invocation(shlex.split(app["cmd"]), where)  # a Mesos `cmd` runs in a shell, without the ENTRYPOINT


def test_dploy_example_loads(tmp_path: Path):
    """examples/dploy is a dploy project: its descriptor and its spec are read by the real code."""
    from autodeployer.config.dploy import dploy_hook_url, read_dploy
    from autodeployer.model import SourceFile, Tree
    from autodeployer.targets.marathon import parse_desired

    directory = ROOT / "examples" / "dploy"
    built = read_dploy(directory, base_env(STATE_DIR=str(tmp_path / "state"), GITHUB_TOKEN="ghp_example123456"))
    [app] = built.config.apps
    assert app.name == "shop" and app.target.kind == "marathon" and app.source.branch == "dcos"
    assert dploy_hook_url(built.config) == "http://52.37.239.156:5000/dploy"
    files = {str(p.relative_to(directory)): p.read_bytes() for p in (directory / "specs").glob("*.json")}
    tree = Tree("0" * 40, "1" * 40, {path: SourceFile(path, data, "100644", len(data)) for path, data in files.items()})
    desired = parse_desired(tree, "specs", "shop")
    assert set(desired.apps) == {"/shop/web"} and not desired.warnings


def test_pyproject_ships_the_postgresql_driver_and_the_image_builds_from_what_it_copies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(dep.startswith("psycopg[binary]") for dep in project["dependencies"])
    assert project["optional-dependencies"]["postgres"] == []  # the old extra still resolves
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = {name for line in re.findall(r"^COPY (.+) \S+$", dockerfile, re.MULTILINE) for name in line.split()}
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for needed in ("pyproject.toml", "README.md", "src", *project.get("license-files", [])):
        assert needed in copied, f"the Dockerfile does not copy {needed}, which the build needs"
        assert needed not in ignored and (ROOT / needed).exists(), needed


def test_documented_bash_completion_completes_verbs_and_subcommands():
    """The line docs/operations.md tells bash users to add, run in a real bash."""
    [line] = [line.split("#")[0].strip() for _, text in fenced("bash") for line in text.splitlines()
              if "bash_source" in line and line.startswith("eval")]
    bin_dir = str(Path(sys.executable).parent)  # where the `autodeployer` entry point is installed
    script = f"""{line}
complete_words() {{ COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMPREPLY=(); _autodeployer_completion autodeployer;
                    printf '%s ' "${{COMPREPLY[@]}}"; echo; }}
complete_words autodeployer sy
complete_words autodeployer hooks re
complete_words autodeployer history --li
"""
    env = base_env(PATH=f"{bin_dir}:{os.environ['PATH']}")
    answer = subprocess.run(["bash", "--norc", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert answer.returncode == 0, answer.stderr
    verbs, hooks, flags = (line.split() for line in answer.stdout.splitlines())
    assert verbs == ["sync"] and sorted(hooks) == ["register", "remove"] and flags == ["--limit"]


def test_every_example_file_parses():
    files = sorted(p for p in (ROOT / "examples").rglob("*") if p.is_file())
    assert {p.name for p in files} >= {"apps.yaml", "dploy.app", "web.json", "marathon-autodeployer.json"}
    for path in files:
        text = path.read_text()
        if path.suffix == ".json":
            assert isinstance(json.loads(text), dict), path
        elif path.suffix in (".yaml", ".yml", ".app"):  # dploy.app is YAML
            assert isinstance(yaml.safe_load(text), dict), path
        else:
            raise AssertionError(f"{path}: an example of a kind no test reads")
