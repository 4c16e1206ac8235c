"""RabbitMQ administration (virtual hosts): the management HTTP API when it is reachable,
else ``rabbitmqctl`` on this host.

A broker in a container is administered through its API (``BALLAST_RABBITMQ_API_URL``,
by default ``http://<broker host>:15672`` with the broker URL's credentials), so nothing
here needs ``rabbitmqctl`` on the host; a local broker without the management plugin is
administered with ``rabbitmqctl``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlparse

import httpx

from infra.settings import get_settings

API_PORT = 15672
TIMEOUT_S = 5.0  # s, per API request


class AdminUnavailable(RuntimeError):
    """Neither the management API nor ``rabbitmqctl`` can be used."""


@dataclass(frozen=True)
class Api:
    """Where the management API is and who to be there."""

    base: str
    user: str
    password: str

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, auth=(self.user, self.password), timeout=TIMEOUT_S)


def api(broker_url: str | None = None) -> Api:
    """The API of ``BALLAST_RABBITMQ_API_URL``, or derived from the broker URL."""
    s = get_settings()
    amqp = urlparse(broker_url or s.broker_url)
    user = unquote(amqp.username or "guest")
    password = unquote(amqp.password or "guest")
    if s.rabbitmq_api_url:
        u = urlparse(s.rabbitmq_api_url)
        if u.username:
            user, password = unquote(u.username), unquote(u.password or "")
        netloc = u.hostname + (f":{u.port}" if u.port else "")
        return Api(f"{u.scheme}://{netloc}{u.path.rstrip('/')}", user, password)
    return Api(f"http://{amqp.hostname or '127.0.0.1'}:{API_PORT}", user, password)


def api_get(path: str, broker_url: str | None = None, **params: Any) -> Any | None:
    """GET ``/api{path}`` as JSON; None when the API is not reachable (or not enabled)."""
    try:
        with api(broker_url).client() as c:
            r = c.get(f"/api{path}", params=params or None)
    except httpx.HTTPError:
        return None
    if r.status_code == 404 and path.startswith("/overview"):
        return None
    if r.status_code == 404:
        return {}
    if r.status_code >= 400:
        return None
    return r.json()


def api_reachable(broker_url: str | None = None) -> bool:
    return api_get("/overview", broker_url) is not None


def _ctl(*args: str) -> str:
    if shutil.which("rabbitmqctl") is None:
        raise AdminUnavailable(
            "cannot administer RabbitMQ: the management API is not reachable at "
            f"{api().base} (set BALLAST_RABBITMQ_API_URL) and rabbitmqctl is not installed here")
    done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise AdminUnavailable(f"rabbitmqctl {args[0]} failed: "
                               f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    return done.stdout


def vhost(name: str, broker_url: str | None = None) -> dict[str, Any] | None:
    """``{"name", "description"}`` of a vhost, or None when it does not exist."""
    if api_reachable(broker_url):
        found = api_get(f"/vhosts/{quote(name, safe='')}", broker_url)
        return {"name": found["name"], "description": found.get("description") or ""} if found else None
    rows = json.loads(_ctl("list_vhosts", "name", "description", "--formatter", "json") or "[]")
    return next(({"name": r["name"], "description": r.get("description") or ""}
                 for r in rows if r["name"] == name), None)


def create_vhost(name: str, description: str, broker_url: str | None = None) -> None:
    """Create ``name`` (idempotent) and give the broker URL's user every permission on it."""
    a = api(broker_url)
    if api_reachable(broker_url):
        v = quote(name, safe="")
        with a.client() as c:
            c.put(f"/api/vhosts/{v}", json={"description": description}).raise_for_status()
            c.put(f"/api/permissions/{v}/{quote(a.user, safe='')}",
                  json={"configure": ".*", "write": ".*", "read": ".*"}).raise_for_status()
        return
    if vhost(name, broker_url) is None:
        _ctl("add_vhost", name, "--description", description)
    _ctl("set_permissions", "-p", name, a.user, ".*", ".*", ".*")


def delete_vhost(name: str, broker_url: str | None = None) -> None:
    """Delete ``name`` with everything in it; nothing when it does not exist."""
    if api_reachable(broker_url):
        with api(broker_url).client() as c:
            r = c.delete(f"/api/vhosts/{quote(name, safe='')}")
            if r.status_code not in (204, 404):
                r.raise_for_status()
        return
    if vhost(name, broker_url) is not None:
        _ctl("delete_vhost", name)
