"""Faithful emulators of the services autodeployer talks to: Sesam, Marathon, GitHub, Git servers.

A product of its own, next to ``autodeployer`` in the same distribution: tests, the demo and the
benchmarks use it, and it never imports ``autodeployer`` (the product must not shape its own judge).
Each emulator is a sub-package split into ``state`` (the in-memory model, no HTTP), ``routes`` (the
Starlette handlers translating HTTP into state calls) and ``app`` (the app, the loopback server and
the public class); ``python -m autodeployer_emulators.<name>`` serves one stand-alone.
"""
