"""Benchmarks of autodeployer against the approaches it replaces, on loopback only.

Run ``python -m benchmarks`` (or ``./dev bench``) from the repository root; it prints one table per
scenario and rewrites ``BENCHMARKS.md``. Every scenario starts its own Git server, emulators and
service processes, and stops all of them before it returns, so a run leaves nothing behind.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
