"""The public :class:`GitHubEmulator`: the Starlette app, loopback serving and the command line.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Route

from autodeployer_emulators._server import (
    LoopbackServer,
    serve_forever,
    standalone_parser,
    token_from_env,
)
from autodeployer_emulators.github.routes import (
    GitHubRoutes,
)
from autodeployer_emulators.github.state import (
    ALL_METHODS,
)


class GitHubEmulator(GitHubRoutes):
    """In-process GitHub: REST subset over HTTP plus webhook delivery; all state behind one lock."""

    def app(self) -> Starlette:
        """The ASGI app; one catch-all route so prefixes and refs with slashes route uniformly."""
        return Starlette(routes=[Route("/{path:path}", self._endpoint, methods=ALL_METHODS)])

    def serve(self, port: int = 0, host: str = "127.0.0.1") -> LoopbackServer:
        """Start on loopback and return the running server (also usable as a context manager)."""
        server = LoopbackServer(self.app(), host=host, port=port)
        self.base_url = server.url
        return server.start()


# --------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> None:
    """Serve the emulator; the token comes from ``GITHUB_EMULATOR_TOKEN`` (never argv)."""
    parser = standalone_parser("github", 8090, "GITHUB_EMULATOR_TOKEN")
    parser.add_argument("--api-prefix", default="", help='"/api/v3" for GHES mode')
    parser.add_argument("--repo", action="append", default=[], metavar="OWNER/NAME[:BRANCH]",
                        help="repository to create (repeatable); default branch 'main'")
    parser.add_argument("--git-dir", action="append", default=[], metavar="OWNER/NAME=PATH",
                        help="back a --repo with a Git repository on disk (its branches and "
                             "commits)")
    args = parser.parse_args(argv)
    token = token_from_env("GITHUB_EMULATOR_TOKEN")
    emulator = GitHubEmulator(token=token, api_prefix=args.api_prefix)
    git_dirs = dict(spec.split("=", 1) for spec in args.git_dir if "=" in spec)
    for spec in args.repo:
        full, _, branch = spec.partition(":")
        owner, _, name = full.partition("/")
        emulator.add_repo(owner, name, default_branch=branch or "main", git_dir=git_dirs.get(full))
    emulator.base_url = f"http://{args.host}:{args.port}"
    serve_forever(emulator.app(), "GitHub", emulator.api_url, "GITHUB_EMULATOR_TOKEN",
                  token is not None, args.host, args.port)
