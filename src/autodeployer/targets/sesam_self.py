"""The live entities a Sesam sync keeps although Git does not hold them as they are.

Two cases, both decided against the live configuration just read:

* **The deployer's own system.** Repositories of the earlier github-autodeployer generations never
  contained the deployer's own ``system:microservice`` (the G1.x ``AUTODEPLOYER_PATH`` added the live
  one to the upload), so a replace-all upload of such a repository would delete the deployer. Unless
  ``SELF_ID`` says the own system is managed in Git on purpose, the live system is kept in the upload,
  and a commit that would change it is refused.
* **Orchestrator-managed entities** (``ORCHESTRATOR``): the node's orchestrator rewrites an entity and
  keeps what it was given in ``metadata.orchestrator.original_configuration``. When that equals the
  Git file, the live entity is what Git asked for, and uploading the Git file would undo the
  orchestrator.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["SelfRule", "find_self", "orchestrated", "self_id_from_path"]

# Images of this project and of the earlier generations: ".../autodeployer", ".../sesam-autodeployer",
# ".../github-autodeployer", with any registry, owner and tag.
_IMAGE = re.compile(r"(^|/)([a-z0-9._-]*-)?autodeployer(:[^/]*)?(@sha256:[0-9a-f]+)?$")
# Where each generation's environment names the repository and the node.
_REPO_KEYS = ("GIT_URL", "GIT_REPO")
_NODE_KEYS = ("SESAM_API_URL", "NODE_URL")


@dataclass(frozen=True)
class SelfRule:
    """What identifies the deployer's own system on the node."""

    self_id: str | None  # SELF_ID, or the id derived from AUTODEPLOYER_PATH
    api_url: str  # the node this deployer writes to, normalised (scheme, no trailing slash, /api)
    repo_url: str  # the repository this deployer follows
    repo_full_name: str | None  # "owner/name" when known


def self_id_from_path(path: str) -> str:
    """``systems/github-autodeployer.conf.json`` → ``github-autodeployer`` (files are named after ``_id``)."""
    return path.rsplit("/", 1)[-1].removesuffix(".conf.json").removesuffix(".json")


def _same_repo(value: str, rule: SelfRule) -> bool:
    def norm(url: str) -> str:
        url = url.strip().rstrip("/").removesuffix(".git").lower()
        if url.startswith("git@") and ":" in url:  # git@host:org/repo -> host/org/repo
            url = url[4:].replace(":", "/", 1)
        return url.split("://", 1)[-1].split("@", 1)[-1]

    return bool(value) and norm(value) == norm(rule.repo_url)


def _points_here(environment: Mapping[str, Any], rule: SelfRule, normalise: Any) -> bool:
    """The environment of a deployer that follows this repository and writes to this node."""
    env = {k: v for k, v in environment.items() if isinstance(v, str)}
    repo = any(_same_repo(env.get(key, ""), rule) for key in _REPO_KEYS)
    if not repo and rule.repo_full_name and env.get("GITHUB_USER") and env.get("GITHUB_PROJECT"):
        repo = f"{env['GITHUB_USER']}/{env['GITHUB_PROJECT']}".lower() == rule.repo_full_name.lower()
    if not repo:
        return False
    node = next((env[key] for key in _NODE_KEYS if env.get(key)), None)
    # Upstream microservices usually leave the node URL out (they talk to the node they run on).
    return node is None or normalise(node) == rule.api_url


def is_autodeployer_image(image: Any) -> bool:
    return isinstance(image, str) and bool(_IMAGE.search(image.strip().lower()))


def find_self(live: Mapping[str, dict[str, Any]], rule: SelfRule, normalise: Any) -> list[str]:
    """Ids of the live entities that are this deployer, sorted.

    With an id from the settings, that id alone (when it is live). Otherwise every live
    ``system:microservice`` whose environment points a deployer at this repository and node, or whose
    image is an autodeployer image: keeping one too many is harmless, deleting the deployer is not.
    """
    if rule.self_id is not None:
        return [rule.self_id] if rule.self_id in live else []
    found = []
    for _id, entity in live.items():
        if entity.get("type") != "system:microservice":
            continue
        docker = entity.get("docker")
        if not isinstance(docker, dict):
            continue
        environment = docker.get("environment")
        if is_autodeployer_image(docker.get("image")) or (
            isinstance(environment, dict) and _points_here(environment, rule, normalise)
        ):
            found.append(_id)
    return sorted(found)


def orchestrated(live: dict[str, Any], want: dict[str, Any], node_keys: frozenset[str]) -> bool:
    """The live entity is the orchestrator's rewrite of exactly the Git file (keys the node adds aside)."""
    metadata = live.get("metadata")
    orchestrator = metadata.get("orchestrator") if isinstance(metadata, dict) else None
    original = orchestrator.get("original_configuration") if isinstance(orchestrator, dict) else None
    if not isinstance(original, dict):
        return False
    return {k: v for k, v in original.items() if k not in node_keys} == want
