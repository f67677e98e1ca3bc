"""A faithful emulator of the Sesam node HTTP API, served over real HTTP.

Sesam cannot run here, so tests, benchmarks and the demo talk to this emulator instead. It follows
``/work/shared/reference/sesam-api.md``: bearer auth, ``GET``/``PUT /api/config`` in JSON, zip and
multipart form, the validation rules with the 200/400 split, ``$audit`` bookkeeping, metadata, env
variables, secrets (write-only over HTTP), per-entity pipe and system endpoints, health and status.

Beyond the reference it serves what sesamclient 1.2.6 reads: pumps (``GET``/``POST
/api/pipes/{id}/pump``) and pipe runtimes with run results, ``/api/config-all``,
``/api/config-history/entity``, and the node's own pipes; ``docs/emulators.md`` lists the shapes,
the switches and what is not served.

Split into ``state`` (the node's model and rules, no HTTP), ``routes`` (the Starlette handlers) and
``app`` (the public :class:`SesamEmulator`, serving and the command line). All state lives on a
:class:`SesamEmulator` instance and is guarded by one lock, because the server
runs in another thread while the test inspects and steers it in-process (``entities()``,
``fail_next()``, ``set_delay()``, ``expire_token()``, ``keep_deploying()``, ``fail_runs()`` ...).

Run by hand::

    SESAM_EMULATOR_TOKEN=secret python -m autodeployer_emulators.sesam --host 127.0.0.1 --port 9042
"""

from autodeployer_emulators.sesam.app import SesamEmulator, main
from autodeployer_emulators.sesam.routes import SesamRoutes
from autodeployer_emulators.sesam.state import (
    ENV_REF,
    CheckContext,
    ConfigError,
    Posted,
    RequestRecord,
    SesamState,
    expand_env,
    make_plan,
)

__all__ = [
    "ENV_REF",
    "CheckContext",
    "ConfigError",
    "Posted",
    "RequestRecord",
    "SesamEmulator",
    "SesamRoutes",
    "SesamState",
    "expand_env",
    "main",
    "make_plan",
]
