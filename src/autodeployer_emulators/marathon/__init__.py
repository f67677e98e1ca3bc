"""A faithful emulator of the Marathon REST API (the subset a Git-driven deployer needs).

Marathon cannot run in tests, so the deployer talks real HTTP to this emulator instead. It follows
``/work/shared/reference/marathon-api.md``: apps, groups, deployments that take time and lock apps,
both kinds of 409, 400/404/422 error shapes, id rules, server-side defaults, DC/OS token auth and a
login endpoint. Tests keep an in-process handle (:class:`MarathonEmulator`) to seed state, inject
failures and read the request log; the same controls exist over HTTP under ``/_emulator/`` for the
stand-alone server (``python -m autodeployer_emulators.marathon --port N``). Beyond the reference
it serves what marathon-python 0.13 reads: ``/v2/tasks``, task kills, ``PUT /v2/apps``, health-check
results and ``lastTaskFailure``, with health switches in the app spec's ``env``
(``docs/emulators.md``).

Split into ``state`` (the model and rules, no HTTP), ``routes`` (the request handlers) and ``app``
(the public :class:`MarathonEmulator`, serving and the command line).

Deployments are timed lazily: each one carries a start timestamp and is finished by whichever
request (or inspection call) first sees that its duration has passed: nothing blocks the event
loop.
"""

from autodeployer_emulators.marathon.app import MarathonEmulator, MarathonServer, main
from autodeployer_emulators.marathon.routes import MarathonRoutes
from autodeployer_emulators.marathon.state import (
    FAIL_ENV,
    ID_PATTERN_MESSAGE,
    UNHEALTHY_ENV,
    MarathonState,
    RequestRecord,
    canonical_id,
    default_app_fields,
    parse_label_selector,
)

__all__ = [
    "FAIL_ENV",
    "ID_PATTERN_MESSAGE",
    "UNHEALTHY_ENV",
    "MarathonEmulator",
    "MarathonRoutes",
    "MarathonServer",
    "MarathonState",
    "RequestRecord",
    "canonical_id",
    "default_app_fields",
    "main",
    "parse_label_selector",
]
