"""Emulator of the GitHub REST subset and webhook delivery that autodeployer talks to.

GitHub cannot be reached from tests, so this serves the hooks API, commit statuses and the cheap
branch-head read over real HTTP, and sends webhook deliveries the way GitHub does (headers, JSON or
form bodies, HMAC over the exact bytes sent, no automatic retries). Behaviour follows
``/work/shared/reference/github-api.md``; where GitHub is not pinned down the choice is documented
where it is made. A repository can be backed by a real Git directory (``add_repo(git_dir=...)``):
its branches and commits are then what the branch, ref and commit endpoints serve and what
statuses may name (a SHA it lacks is a 422, as on GitHub). PyGithub drives it in the tests;
``docs/emulators.md`` lists what is not served.

Pull requests (``pulls``) write ``refs/pull/N/head`` and ``refs/pull/N/merge`` into the linked
Git directory, so the loopback Git server serves them.

Split into ``state`` (the model and rules, no HTTP), ``delivery`` (outgoing webhooks), ``pulls``
(pull requests, issue comments, ``pull_request`` deliveries), ``routes``
(the REST pipeline and handlers) and ``app`` (the public :class:`GitHubEmulator`, serving, CLI).

Typical use::

    gh = GitHubEmulator(token="ghp_secret")
    gh.add_repo("acme", "config", repo_id=1234, default_branch="master")
    gh.set_head("acme", "config", "master", sha)
    with gh.serve() as server:
        ...  # point the code under test at server.url + gh.api_prefix
        gh.push("acme", "config", "refs/heads/master", before, after)
"""

from autodeployer_emulators.github.app import GitHubEmulator, main
from autodeployer_emulators.github.delivery import GitHubDelivery
from autodeployer_emulators.github.routes import GitHubRoutes
from autodeployer_emulators.github.state import (
    DeliveryRecord,
    GitHubState,
    Hook,
    RateBudget,
    RequestRecord,
    decode_body,
    encode_body,
    sign_sha1,
    sign_sha256,
)

__all__ = [
    "DeliveryRecord",
    "GitHubDelivery",
    "GitHubEmulator",
    "GitHubRoutes",
    "GitHubState",
    "Hook",
    "RateBudget",
    "RequestRecord",
    "decode_body",
    "encode_body",
    "main",
    "sign_sha1",
    "sign_sha256",
]
