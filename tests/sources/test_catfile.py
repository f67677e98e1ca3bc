"""sources/catfile.py: blobs read with one streaming `git cat-file --batch`, against a real repository."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from autodeployer.errors import SourceError
from autodeployer.sources import catfile


def repo_with(tmp_path: Path, contents: list[bytes]) -> tuple[Path, list[str]]:
    repo = tmp_path / "r.git"
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
    oids = []
    for data in contents:
        out = subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=repo, input=data, capture_output=True,
                             check=True)
        oids.append(out.stdout.decode().strip())
    return repo, oids


def read(repo: Path, oids: list[str]) -> dict[str, bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    return asyncio.run(catfile.cat_blobs(oids, repo, env, 30, lambda err: SourceError(f"failed: {err}"),
                                         lambda oid: SourceError(f"object {oid} missing")))


@pytest.mark.parametrize("chunk", [1, 5, 64, 1 << 18])
def test_blobs_are_cut_out_across_chunk_boundaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int):
    contents = [b"", b"\n", b"{}\n", b"x" * 3000, "å\n\n✓".encode(), b"a\nb 12\n"] + [b"%d\n" % i for i in range(50)]
    repo, oids = repo_with(tmp_path, contents)
    monkeypatch.setattr(catfile, "CHUNK", chunk)
    blobs = read(repo, oids + oids[:3])  # asked twice: read once
    assert [blobs[o] for o in oids] == contents and len(blobs) == len(set(oids))


def test_a_missing_object_is_an_error_naming_it(tmp_path: Path):
    repo, oids = repo_with(tmp_path, [b"one\n"])
    with pytest.raises(SourceError, match=r"object 0{40} missing"):
        read(repo, [oids[0], "0" * 40])
