"""The command line: `commands` defines the verbs, `operations` the status/history/action views."""

from .commands import main

__all__ = ["main"]
