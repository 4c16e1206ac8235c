"""The chaos run's own RabbitMQ node, PostgreSQL instance and Redis, in one temporary
directory, on ports of their own: restarting them as faults never touches the shared
services other people's tests use.  Every process started here is stopped by its own id."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pika

START_TIMEOUT_S = 90.0  # s for a service to accept connections


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _as_owner(owner: str | None) -> list[str]:
    """Run as ``owner`` when we are root (initdb and rabbitmq refuse or drop root)."""
    if owner and os.geteuid() == 0:
        return ["runuser", "-u", owner, "--"]
    return []


def _chown(path: str, owner: str | None) -> None:
    if owner and os.geteuid() == 0:
        subprocess.run(["chown", "-R", f"{owner}:{owner}", path], check=True)


def _owner_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


class OwnPostgres:
    """A PostgreSQL instance (initdb + pg_ctl) with fsync and synchronous_commit on."""

    def __init__(self, base: str) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        found = shutil.which("pg_ctl") or (bins[-1] if bins else None)
        if not found:
            raise RuntimeError("pg_ctl not found (install postgresql)")
        self.bin = Path(found).parent
        self.dir = os.path.join(base, "pg")
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self.owner = "postgres" if os.geteuid() == 0 and _owner_exists("postgres") else None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/ballast_chaos"

    def _ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([*_as_owner(self.owner), str(self.bin / "pg_ctl"), "-D", self.data,
                               *args], capture_output=True, text=True, timeout=120, check=check)

    def init(self) -> None:
        os.makedirs(self.dir, exist_ok=True)
        _chown(self.dir, self.owner)
        subprocess.run([*_as_owner(self.owner), str(self.bin / "initdb"), "-D", self.data, "-U",
                        "postgres", "-A", "trust", "-E", "UTF8", "--no-instructions"],
                       capture_output=True, text=True, timeout=120, check=True)
        self.start()

    def start(self) -> None:
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir} "
                "-c fsync=on -c synchronous_commit=on -c max_connections=200")
        self._ctl("-l", os.path.join(self.dir, "log"), "-w", "-t", "90", "-o", opts, "start")

    def stop(self, mode: str = "fast") -> None:
        """``fast`` (clean shutdown) or ``immediate`` (no checkpoint: crash recovery on start)."""
        self._ctl("-m", mode, "-w", "-t", "90", "stop", check=False)

    def running(self) -> bool:
        return self._ctl("status", check=False).returncode == 0


class OwnRabbit:
    """A RabbitMQ node ``chaos-<id>@localhost`` with its own ports, Mnesia, logs, config and
    (empty: no management) plugins file."""

    def __init__(self, base: str, run_id: str) -> None:
        self.dir = os.path.join(base, "rabbit")
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"chaos-{run_id}@localhost"
        self.proc: subprocess.Popen | None = None
        self.owner = "rabbitmq" if os.geteuid() == 0 and _owner_exists("rabbitmq") else None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def init(self) -> None:
        for sub in ("mnesia", "log"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        with open(os.path.join(self.dir, "rabbitmq.conf"), "w") as f:
            f.write(f"listeners.tcp.default = {self.port}\nloopback_users.guest = true\n"
                    "disk_free_limit.absolute = 50MB\n")
        with open(os.path.join(self.dir, "enabled_plugins"), "w") as f:
            f.write("[].\n")
        _chown(self.dir, self.owner)
        self.start()

    def environ(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            RABBITMQ_NODENAME=self.node, RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=os.path.join(self.dir, "mnesia"),
            RABBITMQ_LOG_BASE=os.path.join(self.dir, "log"),
            RABBITMQ_CONFIG_FILE=os.path.join(self.dir, "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(self.dir, "enabled_plugins"),
            RABBITMQ_PID_FILE=os.path.join(self.dir, "pid"),
        )
        return env

    def start(self) -> None:
        log = open(os.path.join(self.dir, "server.log"), "ab")
        self.proc = subprocess.Popen(["rabbitmq-server"], env=self.environ(), stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited; see {self.dir}/server.log")
            if _accepts(self.port):
                try:
                    pika.BlockingConnection(pika.URLParameters(self.url)).close()
                    return
                except Exception:
                    pass
            time.sleep(0.3)
        raise RuntimeError(f"RabbitMQ node {self.node} did not start in {START_TIMEOUT_S}s")

    def _beam_pid(self) -> int | None:
        """The Erlang VM's pid (the wrapper hands it to another session when it drops root)."""
        try:
            with open(os.path.join(self.dir, "pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (a clean stop) or SIGKILL (the node is lost) of the node's VM and wrapper."""
        if self.proc is None:
            return
        sig = signal.SIGKILL if kill else signal.SIGTERM
        beam = self._beam_pid()
        for target in (beam,):
            if target:
                try:
                    os.kill(target, sig)
                except ProcessLookupError:
                    pass
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        deadline = time.monotonic() + 60
        while beam and _alive(beam) and time.monotonic() < deadline:
            time.sleep(0.1)
        if beam and _alive(beam):
            os.kill(beam, signal.SIGKILL)
        try:
            os.remove(os.path.join(self.dir, "pid"))
        except OSError:
            pass
        self.proc = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is gone for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


class OwnRedis:
    def __init__(self, base: str) -> None:
        self.dir = os.path.join(base, "redis")
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def init(self) -> None:
        os.makedirs(self.dir, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _accepts(self.port):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None


class OwnServices:
    """The three, started in one temporary directory and removed with it."""

    def __init__(self, run_id: str) -> None:
        self.base = tempfile.mkdtemp(prefix=f"ballast-chaos-{run_id}-")
        os.chmod(self.base, 0o755)
        self.pg = OwnPostgres(self.base)
        self.rabbit = OwnRabbit(self.base, run_id)
        self.redis = OwnRedis(self.base)

    def start(self) -> "OwnServices":
        try:
            self.redis.init()
            self.pg.init()
            self.rabbit.init()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, keep: bool = False) -> None:
        for step in (self.rabbit.stop, self.pg.stop, self.redis.stop):
            try:
                step()
            except Exception:
                pass
        if not keep:
            shutil.rmtree(self.base, ignore_errors=True)
