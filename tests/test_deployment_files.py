"""The Procfile, docker-compose.yml and mosquitto.conf agree with each other and actually load.

No Docker engine runs here, so compose is checked as data; Mosquitto runs its config for real.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from rig.servers import MosquittoServer
from tests.support.credentials import mosquitto_password_file

ROOT = Path(__file__).resolve().parent.parent
PROCESSES = {"standin", "worker", "bridge", "flower"}
WORKER_ENV = (
    "env REMAP_SIGTERM=SIGQUIT TASKHUB_TASKS__SOFT_SHUTDOWN_TIMEOUT=2 "
    "TASKHUB_TELEMETRY__WORKER_PORT=$PORT "
)
"""The Procfile worker's environment: honcho's $PORT differs for each copy of a process type,
so `-c worker=N` copies never ask for one probe port; a 2 s soft shutdown fits honcho's 5 s."""
EXEC = "exec "
"""Each Procfile line replaces honcho's shell with its program, which gets honcho's SIGTERM and
reports its own exit status (README, "Stopping")."""
WEB_UIS = ("flower", "prometheus", "grafana", "jaeger")


def _procfile(*, raw: bool = False) -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    commands = dict(line.split(": ", 1) for line in lines if line.strip())
    return commands if raw else {name: c.removeprefix(EXEC) for name, c in commands.items()}


def test_every_procfile_process_replaces_honchos_shell() -> None:
    assert all(command.startswith(EXEC) for command in _procfile(raw=True).values())


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def test_procfile_runs_every_process_with_autoscaling_worker() -> None:
    procfile = _procfile()
    assert set(procfile) == PROCESSES | {"feed"}
    assert procfile["worker"].startswith(
        WORKER_ENV + "celery -A taskhub worker -P gevent --autoscale="
    )
    assert procfile["flower"] == "celery -A taskhub flower --conf=flowerconfig.py"
    assert procfile["bridge"] == "python -m bridge"


def test_compose_runs_the_procfile_commands_beside_redis_and_mosquitto() -> None:
    services = _compose()["services"]
    assert set(services) >= PROCESSES | {"redis", "mosquitto"}
    for name, command in _procfile().items():
        compose_command = " ".join(services[name]["command"])
        command = command.removeprefix(WORKER_ENV)
        command = command.replace(" -n worker.$PORT@%h", "")  # honcho numbers its copies
        assert command.split(" --address")[0] in compose_command, name
    assert services["worker"]["environment"]["REMAP_SIGTERM"] == "SIGQUIT"


def test_compose_redis_keeps_an_aof_and_never_evicts() -> None:
    command = " ".join(_compose()["services"]["redis"]["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command


def test_compose_mosquitto_uses_the_repo_config() -> None:
    volumes = _compose()["services"]["mosquitto"]["volumes"]
    assert "./scripts/mosquitto.conf:/mosquitto/config/mosquitto.conf:ro" in volumes


@pytest.mark.e2e  # starts a Mosquitto
def test_repo_mosquitto_config_loads_in_a_real_broker(tmp_path: Path) -> None:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("no mosquitto binary on this machine")
    config = (ROOT / "scripts/mosquitto.conf").read_text()
    assert "persistence true" in config
    assert "max_queued_messages 0" in config
    passwords = mosquitto_password_file(tmp_path / "passwords", "taskhub", "not-a-secret")
    broker = MosquittoServer(tmp_path / "mosquitto", password_file=passwords)
    broker.start()  # fails unless it listens
    broker.stop()


def test_readme_documents_every_setting() -> None:
    from taskhub.settings import known_variables

    known = known_variables()
    leaves = {name for name in known if not any(other.startswith(name + "__") for other in known)}
    readme = (ROOT / "README.md").read_text()
    missing = sorted(name for name in leaves if f"`{name}`" not in readme)
    assert missing == []


def test_compose_serves_flower_behind_basic_auth_from_settings() -> None:
    flower = _compose()["services"]["flower"]
    assert "--conf=flowerconfig.py" in " ".join(flower["command"])
    assert flower["environment"]["TASKHUB_FLOWER__PASSWORD"].startswith(
        "${TASKHUB_FLOWER__PASSWORD:?"
    )


def test_compose_probes_listen_where_prometheus_can_reach_them() -> None:
    services = _compose()["services"]
    for name in ("bridge", "worker"):
        assert services[name]["environment"]["TASKHUB_TELEMETRY__ADDRESS"] == "0.0.0.0", name


def _healthcheck_probe(service: str) -> str:
    """The Python source a compose healthcheck runs (`python -c SOURCE`)."""
    test = _compose()["services"][service]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], service
    return str(test[3])


def test_compose_healthchecks_ask_each_process_its_readiness_probe() -> None:
    from taskhub.settings import TelemetrySettings

    defaults = TelemetrySettings()
    for service, port in (("bridge", defaults.bridge_port), ("worker", defaults.worker_port)):
        assert f"http://127.0.0.1:{port}/readyz" in _healthcheck_probe(service), service


@pytest.mark.parametrize("ready", [True, False])
def test_compose_healthcheck_fails_exactly_when_readyz_does(ready: bool) -> None:
    """python:3.11-slim has no curl: the check is Python's urllib, which must exit non-zero on
    a 503. Run against a real probe server on a free port."""
    from taskhub.telemetry.probes import ProbeServer, Verdict

    verdict = Verdict(ready, "ok" if ready else "stalled")
    server = ProbeServer("127.0.0.1", 0, lambda: b"", lambda: Verdict(True), lambda: verdict)
    server.start()
    try:
        source = _healthcheck_probe("worker").replace(":9182/", f":{server.port}/")
        result = subprocess.run([sys.executable, "-c", source], capture_output=True, timeout=30)
    finally:
        server.stop()
    assert (result.returncode == 0) == ready, result.stderr


def test_compose_publishes_web_interfaces_on_loopback_only() -> None:
    services = _compose()["services"]
    for name in WEB_UIS:
        ports = services[name]["ports"]
        assert ports, name
        assert all(str(port).startswith("127.0.0.1:") for port in ports), name


def test_compose_prometheus_runs_the_repo_config_and_rules() -> None:
    prometheus = _compose()["services"]["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus")
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]


def test_prometheus_config_scrapes_the_compose_services_on_their_probe_ports() -> None:
    from taskhub.settings import TelemetrySettings

    defaults = TelemetrySettings()
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job["dns_sd_configs"] for job in config["scrape_configs"]}
    assert jobs == {
        "taskhub-bridge": [
            {
                "names": ["bridge"],
                "type": "A",
                "port": defaults.bridge_port,
                "refresh_interval": "15s",
            }
        ],
        "taskhub-worker": [
            {
                "names": ["worker"],
                "type": "A",
                "port": defaults.worker_port,
                "refresh_interval": "15s",
            }
        ],
    }
    assert {"bridge", "worker"} <= set(_compose()["services"])


def test_compose_grafana_requires_an_admin_password_and_provisions_the_dashboard() -> None:
    grafana = _compose()["services"]["grafana"]
    assert grafana["image"].startswith("grafana/grafana")
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith(
        "${GRAFANA_ADMIN_PASSWORD:?"
    )
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]


def test_compose_traces_only_with_the_tracing_profile_and_an_endpoint() -> None:
    """Jaeger runs with `--profile tracing`; the bridge and workers export to the endpoint the
    environment names, none by default (docs/tracing.md)."""
    services = _compose()["services"]
    jaeger = services["jaeger"]
    assert jaeger["profiles"] == ["tracing"]
    assert jaeger["image"].startswith("jaegertracing/jaeger:2.")
    assert {"127.0.0.1:16686:16686", "127.0.0.1:4318:4318"} <= set(jaeger["ports"])
    for name in ("bridge", "worker"):
        endpoint = services[name]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
        assert endpoint == "${OTEL_EXPORTER_OTLP_ENDPOINT:-}", name
    untraced = set(services) - {"bridge", "worker"}
    assert not any(
        "OTEL_EXPORTER_OTLP_ENDPOINT" in (services[name].get("environment") or {})
        for name in untraced
    )
    command = (ROOT / "docs/tracing.md").read_text()
    assert "OTEL_EXPORTER_OTLP_ENDPOINT=http://jaeger:4318 docker compose --profile tracing up" in (
        command
    )
