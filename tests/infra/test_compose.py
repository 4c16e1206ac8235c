"""docker-compose.yml, .env.example and the Dockerfile: valid against the Compose
Specification's JSON schema (vendored: tests/schemas/), and the fixes of issue 17 in place."""

from __future__ import annotations

import copy
import json
import re
from urllib.parse import urlparse

import jsonschema
import pytest
import yaml

from infra.settings import broker_urls
from tests.harness import ROOT

SCHEMA = json.loads((ROOT / "tests/schemas/compose-spec.json").read_text())
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
BALLAST_SERVICES = ("migrate", "worker", "scheduler")


def env_example() -> dict[str, str]:
    """.env.example with its own ${VAR} references expanded, as compose and `set -a; .` do."""
    values: dict[str, str] = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, _, value = line.partition("=")
        values[key] = re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], value)
    return values


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}."""
    def one(m):
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if name in env and env[name] != "":
            return env[name]
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        return arg or ""
    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value)


def test_docker_compose_yml_is_valid_against_the_compose_spec_schema():
    jsonschema.Draft201909Validator.check_schema(SCHEMA)
    errors = sorted(jsonschema.Draft201909Validator(SCHEMA).iter_errors(COMPOSE), key=str)
    assert errors == []


def test_the_schema_check_would_catch_a_broken_file():
    broken = copy.deepcopy(COMPOSE)
    broken["services"]["worker"]["depends_on"]["migrate"] = {"condition": "when_it_feels_like_it"}
    broken["services"]["redis"]["no_such_key"] = 1
    assert len(list(jsonschema.Draft201909Validator(SCHEMA).iter_errors(broken))) >= 2


def test_ports_are_bound_to_loopback_and_workers_publish_none():
    env = env_example()
    for name, svc in COMPOSE["services"].items():
        for port in svc.get("ports", []):
            host = interpolate(str(port), {}).split(":")[0]
            assert host == "127.0.0.1", (name, port)
            assert interpolate(str(port), env).startswith(env["BALLAST_BIND"] + ":")
    assert "ports" not in COMPOSE["services"]["worker"]  # --scale worker=N never clashes
    assert COMPOSE["services"]["worker"]["expose"] == ["9191"]


def test_one_image_built_once_and_run_by_every_ballast_service():
    built = [n for n, s in COMPOSE["services"].items() if "build" in s]
    assert built == ["migrate"]
    images = {COMPOSE["services"][n]["image"] for n in BALLAST_SERVICES}
    assert len(images) == 1
    assert all(COMPOSE["services"][n]["pull_policy"] == "never" for n in BALLAST_SERVICES)


def test_health_checks_postgres_rabbitmq_and_the_workers_and_scheduler():
    s = COMPOSE["services"]
    assert "-h 127.0.0.1" in " ".join(s["postgres"]["healthcheck"]["test"])
    assert re.fullmatch(r"rabbitmq:4(\.\d+)*-management", s["rabbitmq"]["image"])
    mount = next(v for v in s["rabbitmq"]["volumes"] if "enabled_plugins" in v)
    plugins = (ROOT / mount.split(":")[0]).read_text()
    assert "rabbitmq_management" in plugins and "rabbitmq_prometheus" in plugins
    assert any(":15692:15692" in p for p in s["rabbitmq"]["ports"])
    for name in ("postgres", "rabbitmq", "redis", "worker", "scheduler"):
        assert s[name]["healthcheck"]["test"], name
    # Each checks the /healthz of its own metrics port (tests/e2e/test_observability.py
    # proves what it answers), the port the service is told to use.
    assert "127.0.0.1:9191/healthz" in " ".join(s["worker"]["healthcheck"]["test"])
    assert s["worker"]["environment"]["BALLAST_METRICS_PORT"] == "9191"
    assert "127.0.0.1:9200/healthz" in " ".join(s["scheduler"]["healthcheck"]["test"])
    assert s["scheduler"]["environment"]["BALLAST_SCHEDULER_METRICS_PORT"] == "9200"
    assert s["scheduler"]["expose"] == ["9200"] and "ports" not in s["scheduler"]


def test_env_example_is_the_one_set_of_settings_compose_uses():
    env = env_example()
    inside = {k: interpolate(v, env) for k, v in COMPOSE["x-ballast-env"].items()}
    for key in ("BALLAST_DATABASE_URL", "BALLAST_BROKER_URL", "BALLAST_REDIS_URL"):
        # The broker URL lists the `ha` profile's nodes: the first is `rabbitmq`.
        host_url, compose_url = urlparse(env[key]), urlparse(broker_urls(inside[key])[0])
        # The same credentials, database, vhost and db; only the host differs.
        assert (host_url.username, host_url.password, host_url.path) == (
            compose_url.username, compose_url.password, compose_url.path), key
        assert host_url.hostname == "127.0.0.1"
    assert urlparse(env["BALLAST_DATABASE_URL"]).password == env["BALLAST_DB_PASSWORD"]
    assert urlparse(env["BALLAST_BROKER_URL"]).path == "/" + env["BALLAST_AMQP_VHOST"]
    postgres = {k: interpolate(v, env) for k, v in COMPOSE["services"]["postgres"]["environment"].items()}
    assert postgres["POSTGRES_PASSWORD"] == env["BALLAST_DB_PASSWORD"]
    rabbit = {k: interpolate(v, env) for k, v in COMPOSE["services"]["rabbitmq"]["environment"].items()}
    assert (rabbit["RABBITMQ_DEFAULT_USER"], rabbit["RABBITMQ_DEFAULT_VHOST"]) == (
        env["BALLAST_AMQP_USER"], env["BALLAST_AMQP_VHOST"])
    with pytest.raises(KeyError):  # no silent default password
        interpolate(COMPOSE["x-ballast-env"]["BALLAST_DATABASE_URL"], {})


def test_the_image_installs_the_hashed_lock_and_the_lock_pins_every_dependency():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--require-hashes -r requirements.lock" in dockerfile
    assert "pip install --no-cache-dir --no-deps ." in dockerfile
    lock = (ROOT / "requirements.lock").read_text().lower().replace("_", "-")
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        name = re.match(r"[A-Za-z0-9_.-]+", dep).group(0).lower().replace("_", "-")
        assert re.search(rf"^{re.escape(name)}==\S+ \\$", lock, re.M), name
    pins = re.findall(r"^([a-z0-9.-]+)==", lock, re.M)
    hashed = re.findall(r"^([a-z0-9.-]+)==[^\n]*\n(?:\s+--hash=sha256:[0-9a-f]{64}[^\n]*\n)+", lock, re.M)
    assert pins and sorted(pins) == sorted(hashed)


def test_every_pin_of_the_lock_satisfies_pyproject_and_no_extra_is_unused_or_twice():
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lock = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\$",
                           (ROOT / "requirements.lock").read_text(), re.M))
    lock = {k.lower().replace("_", "-"): v for k, v in lock.items()}
    runtime = [Requirement(d) for d in project["dependencies"]]
    for req in runtime:
        name = req.name.lower().replace("_", "-")
        assert req.specifier.contains(lock[name]), (req, lock[name])
    by_name = {r.name.lower(): r for r in runtime}
    assert by_name["click"].specifier.contains("8.2.0") and not by_name["click"].specifier.contains("8.1.8")
    assert by_name["dramatiq"].extras == {"rabbitmq"}  # Dramatiq's Redis parts are not used
    assert "tzdata" in by_name
    for req in (Requirement(d) for d in project["optional-dependencies"]["test"]):
        assert req.name.lower() not in by_name, f"{req.name} is a runtime dependency already"


def test_the_ha_profile_clusters_three_rabbitmq_nodes_every_ballast_service_knows():
    env = env_example()
    s = COMPOSE["services"]
    nodes = ["rabbitmq", "rabbitmq-2", "rabbitmq-3"]
    assert "profiles" not in s["rabbitmq"]  # the default install keeps its one node
    assert [n for n, svc in s.items() if "ha" in svc.get("profiles", [])] == nodes[1:]
    conf = (ROOT / "deploy/rabbitmq/cluster.conf").read_text()
    assert "peer_discovery_backend = classic_config" in conf
    listed = re.findall(r"classic_config\.nodes\.\d+ = rabbit@(\S+)", conf)
    assert listed == nodes
    cookies, volumes = set(), set()
    for n in nodes:
        svc = s[n]
        assert svc["hostname"] == n  # the node name rabbit@<hostname> the others look for
        assert svc["image"] == s["rabbitmq"]["image"]
        mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
        assert mounts["/etc/rabbitmq/conf.d/20-cluster.conf"] == "./deploy/rabbitmq/cluster.conf"
        volumes.add(mounts["/var/lib/rabbitmq"])
        e = {k: interpolate(v, env) for k, v in svc["environment"].items()}
        assert e["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] == e["RABBITMQ_CTL_ERL_ARGS"]
        cookies.add(e["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"])
        assert svc["healthcheck"]["test"]
    assert len(volumes) == 3  # each node its own data
    assert cookies == {f"-setcookie {env['BALLAST_RABBITMQ_COOKIE']}"}  # one shared cookie
    with pytest.raises(KeyError):  # no silent default cookie
        interpolate(s["rabbitmq"]["environment"]["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"], {})
    # Every Ballast service lists the three nodes, one vhost, the same credentials.
    inside = {k: interpolate(v, env) for k, v in COMPOSE["x-ballast-env"].items()}
    urls = [urlparse(u) for u in broker_urls(inside["BALLAST_BROKER_URL"])]
    assert [u.hostname for u in urls] == nodes
    assert {(u.username, u.password, u.path) for u in urls} == {
        (env["BALLAST_AMQP_USER"], env["BALLAST_AMQP_PASSWORD"], "/" + env["BALLAST_AMQP_VHOST"])}
    assert [urlparse(u).hostname for u in broker_urls(inside["BALLAST_RABBITMQ_API_URL"])] == nodes
    from infra.settings import Settings

    settings = Settings(broker_url=inside["BALLAST_BROKER_URL"],
                        queue_type=inside["BALLAST_QUEUE_TYPE"])
    assert len(settings.broker_urls) == 3
