"""RabbitMQ administration (virtual hosts): the management HTTP API when it is reachable,
else ``rabbitmqctl`` on this host.

A broker in a container is administered through its API (``BALLAST_RABBITMQ_API_URL``,
by default ``http://<broker host>:15672`` with the broker URL's credentials), so nothing
here needs ``rabbitmqctl`` on the host; a local broker without the management plugin is
administered with ``rabbitmqctl``.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlparse

import httpx

from infra.contract import QUEUES
from infra.settings import broker_urls, get_settings, vhost_of

# httpx logs every request at INFO: not an operator's business.
logging.getLogger("httpx").setLevel(logging.WARNING)

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


def apis(broker_url: str | None = None) -> list[Api]:
    """Every management API of ``BALLAST_RABBITMQ_API_URL`` (one URL or a comma-separated
    list, one per node of a cluster), or derived from each URL of the broker URL."""
    s = get_settings()
    urls = broker_urls(broker_url or s.broker_url)
    amqp = urlparse(urls[0])
    user = unquote(amqp.username or "guest")
    password = unquote(amqp.password or "guest")
    if s.rabbitmq_api_url:
        out = []
        for raw in broker_urls(s.rabbitmq_api_url):
            u = urlparse(raw)
            who = (unquote(u.username), unquote(u.password or "")) if u.username else (user, password)
            netloc = u.hostname + (f":{u.port}" if u.port else "")
            out.append(Api(f"{u.scheme}://{netloc}{u.path.rstrip('/')}", *who))
        return out
    return [Api(f"http://{urlparse(u).hostname or '127.0.0.1'}:{API_PORT}", user, password)
            for u in urls]


def api(broker_url: str | None = None) -> Api:
    """The first management API that answers (of a cluster's nodes, in order); the first
    one named when none does."""
    candidates = apis(broker_url)
    if len(candidates) > 1:
        for a in candidates:
            try:
                with a.client() as c:
                    if c.get("/api/overview").status_code < 400:
                        return a
            except httpx.HTTPError:
                continue
    return candidates[0]


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


def _vhost_of(broker_url: str | None) -> str:
    return vhost_of(broker_url or get_settings().broker_url)


def _rate(stats: dict[str, Any] | None, key: str) -> float | None:
    details = (stats or {}).get(f"{key}_details")
    return round(float(details["rate"]), 2) if details and "rate" in details else None


def queue_stats(broker_url: str | None = None) -> list[dict[str, Any]] | None:
    """Every contract queue as the management API sees it, or None when it is not reachable.

    ``ready`` and ``unacked`` (delivered to a worker, not yet acknowledged: in flight) of
    the queue itself; ``delayed`` every message of ``Q.DQ`` (Dramatiq's workers hold them
    unacknowledged until their eta); ``dead`` every message of ``Q.XQ`` (read or not);
    ``consumers``; publish and ack rates (messages/s) of the queue.
    """
    from dramatiq.common import dq_name, xq_name

    found = api_get(f"/queues/{quote(_vhost_of(broker_url), safe='')}", broker_url,
                    columns="name,messages,messages_ready,messages_unacknowledged,consumers,"
                            "message_stats")
    if found is None or not isinstance(found, list):
        return None
    by_name = {q["name"]: q for q in found}

    def get(name: str, key: str) -> int:
        return int(by_name.get(name, {}).get(key) or 0)

    rows = []
    for q in QUEUES:
        stats = by_name.get(q, {}).get("message_stats")
        rows.append({
            "queue": q,
            "ready": get(q, "messages_ready"),
            "delayed": get(dq_name(q), "messages"),
            "dead": get(xq_name(q), "messages"),
            "consumers": get(q, "consumers"),
            "unacked": get(q, "messages_unacknowledged"),
            "publish_rate": _rate(stats, "publish"),
            "ack_rate": _rate(stats, "ack"),
            "source": "management",
        })
    return rows
