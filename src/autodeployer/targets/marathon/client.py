"""Marathon's REST API as the target uses it: authenticated calls, deployable writes that wait out
deployment locks, rejections turned into problems that name the app, and following deployments.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import httpx

from ...errors import TargetError
from ...model import Problem
from ..transport import error_detail, request
from .desired import LABEL
from .spec import Spec

LOCK_RETRIES = 5
POLL_FIRST, POLL_MAX = 0.05, 2.0
_SELECTOR_SAFE = re.compile(r"[-A-Za-z0-9_.]")


def label_selector(app_name: str) -> str:
    """`DPLOY==<app_name>` with characters outside the selector grammar escaped."""
    escaped = "".join(c if _SELECTOR_SAFE.fullmatch(c) else "\\" + c for c in app_name)
    return f"{LABEL}=={escaped}"


class MarathonClient:
    """One Marathon, reached over the service's shared HTTP client with the spec's credentials."""

    def __init__(self, spec: Spec, http: httpx.AsyncClient) -> None:
        self.spec = spec
        self._http = http
        self._headers = {"Accept": "application/json"}
        self._auth: httpx.BasicAuth | None = None
        if spec.token is not None:
            self._headers["Authorization"] = f"token={spec.token.get_secret_value()}"
        elif spec.user and spec.password is not None:
            self._auth = httpx.BasicAuth(spec.user, spec.password.get_secret_value())

    async def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = self.spec.url + path
        if self._auth is not None:
            kwargs["auth"] = self._auth
        response = await request(self._http, method, url, headers=self._headers, **kwargs)
        if response.status_code == 401:
            raise TargetError(f"{method} {url}: 401 unauthorized; {self._auth_hint()}")
        return response

    def _auth_hint(self) -> str:
        if self.spec.token is not None:
            return "Marathon rejected the DC/OS token in MARATHON_TOKEN (expired or wrong?)"
        if self._auth is not None:
            return "Marathon rejected MARATHON_USER/MARATHON_PASSWORD"
        return ("Marathon requires authentication: set MARATHON_TOKEN (a DC/OS token) "
                "or MARATHON_USER/MARATHON_PASSWORD")

    @staticmethod
    def json(response: httpx.Response, what: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise TargetError(f"{what}: Marathon answered with something that is not JSON") from None

    async def get(self, path: str, **params: str) -> Any | None:
        """JSON of a GET; None on 404."""
        response = await self.call("GET", path, params=params or None)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise TargetError(f"GET {self.spec.url}{path}: {response.status_code} {error_detail(response)}")
        return self.json(response, f"GET {path}")

    async def managed_apps(self) -> Any:
        """The apps carrying our label (``GET /v2/apps?label=DPLOY==<app_name>``)."""
        return await self.get("/v2/apps", label=label_selector(self.spec.app_name))

    async def write(
        self, method: str, path: str, body: Any, entity: str, deadline: float, log: Any,
        *, partial_update: bool | None = None,
    ) -> str | None:
        """One deployable call; a locked 409 waits for the listed deployments, then retries.

        Returns the id of the deployment it started, if any.
        """
        params: dict[str, str] = {}
        if partial_update is not None:
            params["partialUpdate"] = "true" if partial_update else "false"
        if self.spec.force:
            params["force"] = "true"
        for attempt in range(LOCK_RETRIES + 1):
            response = await self.call(method, path, json=body, params=params or None)
            if response.status_code in (200, 201, 202):
                return self._deployment_id(response, f"{method} {path}")
            if method == "DELETE" and response.status_code == 404:
                return None  # already gone
            locks = self._locks(response)
            if not locks:
                raise self._rejected(method, path, response, entity)
            if attempt == LOCK_RETRIES:
                break
            log.info("marathon app locked; waiting for its deployments", entity=entity, deployments=locks)
            still = await self.wait_gone(set(locks), deadline)
            if still:
                raise TargetError(
                    f"{entity} is locked by deployment(s) {', '.join(sorted(still))} still running after "
                    f"{self.spec.deploy_timeout:g} s (MARATHON_FORCE=true cancels them)",
                    problems=[Problem("locked by a running deployment", entity=entity)])
        raise TargetError(f"{entity} stayed locked after {LOCK_RETRIES} retries",
                          problems=[Problem("locked by running deployments", entity=entity)])

    def _deployment_id(self, response: httpx.Response, what: str) -> str | None:
        """The deployment a write started: in the body (apps, groups) or a header (some versions)."""
        result = self.json(response, what) if response.content else {}
        found = (result or {}).get("deploymentId") or response.headers.get("Marathon-Deployment-Id")
        return str(found) if found is not None else None

    @staticmethod
    def _locks(response: httpx.Response) -> list[str]:
        """Ids of the deployments in a locked 409; empty for any other answer (a duplicate is not a lock)."""
        if response.status_code != 409:
            return []
        try:
            body = response.json()
        except ValueError:
            return []
        deployments = body.get("deployments") if isinstance(body, dict) else None
        if not isinstance(deployments, list):
            return []
        return [str(d["id"]) for d in deployments if isinstance(d, dict) and "id" in d]

    def _rejected(self, method: str, path: str, response: httpx.Response, entity: str) -> TargetError:
        problems: list[Problem] = []
        try:
            body = response.json()
        except ValueError:
            body = None
        details = body.get("details") if isinstance(body, dict) else None
        for item in details if isinstance(details, list) else []:
            if isinstance(item, dict):
                errors = "; ".join(str(e) for e in item.get("errors") or [])
                problems.append(Problem(f"{item.get('path', '/')}: {errors}", entity=entity))
        if not problems:
            problems.append(Problem(error_detail(response), entity=entity))
        return TargetError(f"{method} {self.spec.url}{path}: {response.status_code} {error_detail(response)}",
                           problems=problems)

    async def wait_gone(self, ids: set[str], deadline: float) -> set[str]:
        """Poll /v2/deployments until none of `ids` is listed; returns those still running at the deadline."""
        delay = POLL_FIRST
        while ids:
            body = await self.get("/v2/deployments")
            listed = {str(d.get("id")) for d in body or [] if isinstance(d, dict)}
            ids = ids & listed
            if not ids or time.monotonic() >= deadline:
                return ids
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, POLL_MAX)
        return set()
