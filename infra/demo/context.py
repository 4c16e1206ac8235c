"""What a demo chapter gets: sending commands, waiting, operator views, the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any, Callable

import dramatiq
from rich.console import Console
from sqlalchemy import Engine

from infra.auth import Keyring, ballast_signer
from infra.contract import parse, spec_for


class DemoContext:
    """Parameters:
      engine: the database the workers use.
      broker: a confirming broker to publish commands.
      as_json: collect the report silently (printed as JSON at the end).
    """

    def __init__(self, engine: Engine, broker: dramatiq.Broker, as_json: bool,
                 keyring: Keyring | None = None) -> None:
        self.engine = engine
        #: Signs every command as the producer the policy wants (demo-wagering, cfo, ...).
        self.keyring = keyring or Keyring(engine, "demo", ballast_signer(), by="ballast demo")
        self.broker = broker
        self.tag = time.strftime("%H%M%S") + uuid.uuid4().hex[:4]
        self.as_json = as_json
        self.console = Console(stderr=as_json)
        self.report: dict[str, Any] = {}
        self._chapter: dict[str, Any] | None = None

    def id(self, name: str) -> str:
        """An id unique to this demo run, so the demo can run again and again."""
        return f"{name}-{self.tag}"

    def chapter(self, name: str, title: str) -> None:
        self._chapter = self.report.setdefault(name, {"title": title, "steps": []})
        self.console.rule(f"[bold]{title}")

    def say(self, text: str, **facts: Any) -> None:
        if self._chapter is not None:
            self._chapter["steps"].append({"say": text, **facts})
        self.console.print(f"  {text}")

    def skip(self, name: str, reason: str) -> None:
        self.report[name] = {"skipped": reason}
        self.console.print(f"[dim]{name}: skipped ({reason})[/dim]")

    def send(self, actor: str, **kwargs: Any) -> str:
        """Validate and publish a command (confirmed); returns the message id."""
        kwargs.setdefault("request_id", f"demo-{uuid.uuid4()}")
        spec = spec_for(actor)
        parse(spec.schema, kwargs)
        return self.send_raw(actor, **kwargs)

    def send_raw(self, actor: str, **kwargs: Any) -> str:
        """Publish without validating (to show what happens to bad input)."""
        spec = spec_for(actor)
        msg = dramatiq.Message(queue_name=spec.queue, actor_name=actor, args=(), kwargs=kwargs,
                               options={})
        return self.broker.enqueue(self.keyring.sign(msg)).message_id

    def wait_until(self, predicate: Callable[[], Any], what: str, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = predicate()
            except Exception:
                value = None
            if value:
                return value
            time.sleep(0.25)
        raise TimeoutError(f"waited {timeout}s for {what}")

    def cli(self, *args: str) -> Any:
        """Run ``ballast ARGS --json`` as an operator would and return its document."""
        env = dict(os.environ)
        if "--by" in args:
            # An operator lever: the CLI holds that operator's key, as the operator's would.
            operator = self.keyring.producer(args[args.index("--by") + 1], ["operator"])
            env["BALLAST_OPERATOR_KEY"] = json.dumps(operator.material())
        out = subprocess.run([sys.executable, "-m", "infra.cli.main", *args, "--json"],
                             capture_output=True, text=True, timeout=120, env=env)
        if out.returncode not in (0, 1):
            raise RuntimeError(f"ballast {' '.join(args)} failed: {out.stderr.strip()}")
        return json.loads(out.stdout)

    def show(self, label: str, doc: Any) -> None:
        if self._chapter is not None:
            self._chapter.setdefault("views", {})[label] = doc
        if not self.as_json:
            self.console.print(f"  [cyan]{label}[/cyan]: {json.dumps(doc, default=str)[:600]}")
