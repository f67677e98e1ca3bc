"""tree_id in one git process: SYNC_ROOT as a tree, a file, missing, with a space; against the real mirror."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from pydantic import SecretStr

from autodeployer.sources.git import GitSource
from autodeployer.sources.spec import SourceSpec
from autodeployer_emulators.gitserver import GitHttpServer, WorkRepo

from ..helpers import GIT_TOKEN


def test_tree_id_of_sync_roots(tmp_path: Path, git_server: GitHttpServer, config_repo: WorkRepo):
    config_repo.write({"with space/pipes/a.conf.json": '{"_id": "a", "type": "pipe"}'})
    config_repo.commit("a directory with a space")
    config_repo.push()

    async def scenario() -> dict[str, str]:
        found: dict[str, str] = {}
        async with httpx.AsyncClient() as client:
            for root in ("", "pipes", "with space", "pipes/orders.conf.json", "nowhere"):
                spec = SourceSpec(url=git_server.url_for("acme/config.git"), sync_root=root,
                                  token=SecretStr(GIT_TOKEN))
                src = GitSource(spec, tmp_path / "state", http=client)
                sha = await src.fetch(await src.head())
                found[root] = await src.tree_id(sha)
                src.close()
        return found

    found = asyncio.run(scenario())
    expected = {root: config_repo.git("rev-parse", f"HEAD:{root}" if root else "HEAD^{tree}").strip()
                for root in ("", "pipes", "with space")}
    assert {root: found[root] for root in expected} == expected
    assert found["pipes/orders.conf.json"] == "" and found["nowhere"] == ""  # a file, and nothing, are no tree
