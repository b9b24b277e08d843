"""What the repo ships is locked: no MQTT client gets in without a password, no Redis client
without one, and compose's Redis fsyncs every write, so what the bridge acked is on disk.

No Docker engine runs here, so compose's settings run on real Mosquitto and Redis binaries: its
password-file command, its Mosquitto config, its Redis arguments and healthcheck, and a bridge
with its environment, each moved to a temp dir and a free loopback port.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import stat
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import redis
import yaml
from pydantic import SecretStr

from rig.compose import (
    COMPOSE_FILE,
    MissingVariable,
    compose_file,
    interpolate,
    resolved,
    service,
)
from rig.processes import BRIDGE_READY, Process, python_module, wait_for
from rig.servers import (
    REPO_MOSQUITTO_CONF,
    ConfiguredRedisServer,
    MosquittoServer,
)
from taskhub.mqtt import connect_arguments, new_client
from taskhub.settings import MqttSettings, get_settings, known_variables
from tests.conftest import publish_checkins

ROOT = COMPOSE_FILE.parent
SECRETS = {
    "REDIS_PASSWORD": secrets.token_hex(12),
    "TASKHUB_MQTT__PASSWORD": secrets.token_urlsafe(12),
    "TASKHUB_FLOWER__PASSWORD": secrets.token_urlsafe(12),
    "GRAFANA_ADMIN_PASSWORD": secrets.token_urlsafe(12),
}
"""What `.env` must give compose: it refuses to start without any of them."""
MQTT_USER = "taskhub"
"""The MQTT user compose runs with unless TASKHUB_MQTT__USERNAME names another."""
AUTH_DIR = "/mosquitto/auth"
"""Where compose's password file lives, in the init service's and the broker's volume."""
SHIPPED = [ROOT / "docker-compose.yml", *sorted((ROOT / "scripts").iterdir()),
           *sorted(path for path in (ROOT / "deploy").rglob("*") if path.is_file())]  # fmt: skip
LOGIN_TIMEOUT = 10
DELIVERED_TIMEOUT = 30


def _config_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()[:1] != "#"]


def _password_file_in_config() -> str:
    found = [line.split(None, 1)[1] for line in _config_lines(REPO_MOSQUITTO_CONF)
             if line.startswith("password_file ")]  # fmt: skip
    assert len(found) == 1, "scripts/mosquitto.conf must name one password_file"
    return found[0]


def _login_answer(port: int, username: str | None = None, password: str | None = None) -> str:
    """The reason code a broker's CONNACK gives a client logging in with these credentials."""
    settings = MqttSettings(
        port=port, username=username, password=SecretStr(password) if password else None
    )
    client = new_client(settings, f"login-{uuid.uuid4().hex[:8]}", persistent=False)
    answers: list[str] = []
    answered = threading.Event()

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, *_: Any) -> None:
        answers.append(str(reason))
        answered.set()

    client.on_connect = on_connect
    client.connect(**connect_arguments(settings, persistent=False))
    client.loop_start()
    try:
        assert answered.wait(LOGIN_TIMEOUT), "the broker sent no CONNACK"
    finally:
        client.disconnect()
        client.loop_stop()
    return answers[0]


def _write_password_file(auth_dir: Path) -> Path:
    """Run compose's mosquitto-passwords command here, its volume moved to `auth_dir`."""
    if os.geteuid() != 0 or shutil.which("mosquitto_passwd") is None:
        pytest.skip("the init command chowns its file to user mosquitto: needs root and Mosquitto")
    init = resolved(service("mosquitto-passwords"), SECRETS)
    assert init["image"] == service("mosquitto")["image"]
    shell, flags, script = init["command"]
    auth_dir.mkdir()
    script = script.replace(AUTH_DIR, str(auth_dir))
    env = {"PATH": os.environ["PATH"], **init["environment"]}
    subprocess.run([shell, flags, script], env=env, check=True, timeout=30)
    return auth_dir / Path(_password_file_in_config()).name


@pytest.fixture
def compose_mosquitto(tmp_path: Path) -> Iterator[MosquittoServer]:
    """The repo's Mosquitto config with the password file compose's init service writes."""
    password_file = _write_password_file(tmp_path / "auth")
    broker = MosquittoServer(tmp_path / "mosquitto", password_file=password_file)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def compose_redis(tmp_path: Path) -> Iterator[ConfiguredRedisServer]:
    """redis-server run with compose's arguments (its password from SECRETS)."""
    command = resolved(service("redis")["command"], SECRETS)
    assert command[0] == "redis-server"
    server = ConfiguredRedisServer(tmp_path / "redis", command[1:], SECRETS["REDIS_PASSWORD"])
    server.start()
    yield server
    server.stop()


def test_no_shipped_file_lets_an_anonymous_mqtt_client_in() -> None:
    for path in SHIPPED:
        if path.suffix in {".json", ".png"}:
            continue
        text = path.read_text()
        assert not re.search(r"^\s*allow_anonymous\s+true", text, re.MULTILINE), path
    assert "allow_anonymous false" in _config_lines(REPO_MOSQUITTO_CONF)


def test_compose_broker_reads_its_users_from_the_file_its_init_service_writes() -> None:
    password_file = _password_file_in_config()
    assert password_file.startswith(AUTH_DIR + "/")
    broker, init = service("mosquitto"), service("mosquitto-passwords")
    assert "./scripts/mosquitto.conf:/mosquitto/config/mosquitto.conf:ro" in broker["volumes"]
    [volume] = [v for v in init["volumes"] if v.split(":")[1] == AUTH_DIR]
    assert f"{volume}:ro" in broker["volumes"]  # the broker only reads it
    assert password_file in init["command"][-1]
    assert broker["depends_on"]["mosquitto-passwords"] == {
        "condition": "service_completed_successfully"
    }


def test_compose_requires_every_password_and_says_where_to_get_it() -> None:
    everything = compose_file()
    resolved(everything, SECRETS)  # all given: no complaint
    for name in SECRETS:
        with pytest.raises(MissingVariable, match=rf"^{name}: set {name}"):
            resolved(everything, {key: value for key, value in SECRETS.items() if key != name})


def test_every_redis_url_in_compose_logs_in_with_the_redis_password() -> None:
    services = resolved(compose_file()["services"], SECRETS)
    urls = {
        (name, variable): value
        for name, body in services.items()
        for variable, value in body.get("environment", {}).items()
        if str(value).startswith(("redis://", "rediss://"))
    }
    for name, body in services.items():
        if body.get("working_dir") == "/app":  # a taskhub process
            assert {(name, "TASKHUB_BROKER_URL"), (name, "TASKHUB_RESULT_BACKEND")} <= set(urls)
    for where, url in urls.items():
        password = redis.connection.parse_url(url).get("password")
        assert password == SECRETS["REDIS_PASSWORD"], where
    assert services["redis"]["environment"]["REDISCLI_AUTH"] == SECRETS["REDIS_PASSWORD"]


def test_compose_mqtt_clients_log_in_as_the_user_the_broker_knows() -> None:
    services = resolved(compose_file()["services"], SECRETS)
    login = {
        "TASKHUB_MQTT__USERNAME": MQTT_USER,
        "TASKHUB_MQTT__PASSWORD": SECRETS["TASKHUB_MQTT__PASSWORD"],
    }
    for name in ("mosquitto-passwords", "bridge", "feed"):
        environment = services[name]["environment"]
        assert {key: environment.get(key) for key in login} == login, name


def test_compose_publishes_every_port_on_loopback_unless_told_otherwise() -> None:
    services = compose_file()["services"]
    published = [(name, str(port)) for name, body in services.items()
                 for port in body.get("ports", [])]  # fmt: skip
    assert ("mosquitto", "${MQTT_PUBLISH_ADDRESS:-127.0.0.1}:1883:1883") in published
    for name, port in published:
        assert interpolate(port, SECRETS).startswith("127.0.0.1:"), (name, port)
        opt_in = re.findall(r"\$\{(\w+)", port)
        assert opt_in in ([], ["MQTT_PUBLISH_ADDRESS"]), (name, port)
    readme = (ROOT / "README.md").read_text()
    assert "MQTT_PUBLISH_ADDRESS=0.0.0.0" in readme


def test_compose_redis_fsyncs_every_write_and_wants_a_password() -> None:
    command = " ".join(service("redis")["command"])
    assert "--appendonly yes --appendfsync always" in command
    assert "--requirepass ${REDIS_PASSWORD:?" in command


@pytest.mark.e2e  # starts a Mosquitto
def test_shipped_mosquitto_config_refuses_anonymous_clients_and_admits_the_compose_user(
    compose_mosquitto: MosquittoServer,
) -> None:
    port = compose_mosquitto.port
    password_file = compose_mosquitto.workdir.parent / "auth" / "passwords"
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert SECRETS["TASKHUB_MQTT__PASSWORD"] not in password_file.read_text()  # hashed
    assert _login_answer(port) == "Not authorized"
    assert _login_answer(port, MQTT_USER, secrets.token_urlsafe(8)) != "Success"
    assert _login_answer(port, MQTT_USER, SECRETS["TASKHUB_MQTT__PASSWORD"]) == "Success"


@pytest.mark.e2e  # starts a Redis
def test_redis_with_compose_arguments_fsyncs_always_and_refuses_strangers(
    compose_redis: ConfiguredRedisServer,
) -> None:
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=compose_redis.port).ping()
    client = redis.Redis.from_url(compose_redis.url)
    try:
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    finally:
        client.close()


@pytest.mark.e2e  # starts a Redis
def test_compose_redis_healthcheck_passes_only_when_it_logs_in(
    compose_redis: ConfiguredRedisServer,
) -> None:
    redis_service = resolved(service("redis"), SECRETS)
    kind, command = redis_service["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    command = command.replace("redis-cli", f"redis-cli -p {compose_redis.port}")

    def healthy(environment: dict[str, str]) -> bool:
        env = {"PATH": os.environ["PATH"], **environment}
        return subprocess.run(["sh", "-c", command], env=env, timeout=30).returncode == 0

    assert healthy(redis_service["environment"])
    assert not healthy({})
    assert not healthy({"REDISCLI_AUTH": secrets.token_hex(8)})


@pytest.mark.e2e  # starts servers and a bridge
def test_compose_bridge_environment_delivers_through_the_locked_broker_into_the_locked_redis(
    compose_mosquitto: MosquittoServer, compose_redis: ConfiguredRedisServer, log_dir: Path
) -> None:
    environment = resolved(service("bridge")["environment"], SECRETS)
    env = {key: str(value).replace("@redis:6379/", f"@127.0.0.1:{compose_redis.port}/")
           for key, value in environment.items()}  # fmt: skip
    env |= {
        "TASKHUB_MQTT__HOST": "127.0.0.1",
        "TASKHUB_MQTT__PORT": str(compose_mosquitto.port),
        "TASKHUB_MQTT__CLIENT_ID": f"{get_settings().mqtt.client_id}-locked",
        "TASKHUB_BRIDGE__SPOOL_DIR": str(log_dir / "spool"),
        "TASKHUB_TELEMETRY__ADDRESS": "127.0.0.1",
    }
    bridge = Process("locked-bridge", python_module("bridge"), log_dir, env).start()
    client = redis.Redis.from_url(compose_redis.url)
    try:
        bridge.wait_output(BRIDGE_READY, timeout=30, count=2)
        login = {"username": MQTT_USER, "password": SecretStr(SECRETS["TASKHUB_MQTT__PASSWORD"])}
        mqtt_settings = get_settings().mqtt.model_copy(
            update={"port": compose_mosquitto.port, **login}
        )
        publish_checkins(3, id_base=930_000, mqtt=mqtt_settings)
        wait_for(lambda: client.llen("checkins") == 3, DELIVERED_TIMEOUT, "3 tasks in Redis")
    finally:
        bridge.terminate()
        client.close()
    for secret in (SECRETS["REDIS_PASSWORD"], SECRETS["TASKHUB_MQTT__PASSWORD"]):
        assert secret not in bridge.output()


def _compose_cli() -> list[str] | None:
    """A Compose that can check the file (`docker compose` v2, or docker-compose), if any."""
    if shutil.which("docker"):
        version = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if version.returncode == 0:
            return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def _run_compose_env(root: Path, environment: dict[str, str] | None = None) -> str:
    """scripts/compose-env run from a copy of it in `root`/scripts, so it writes `root`/.env."""
    (root / "scripts").mkdir(exist_ok=True)
    shutil.copy2(ROOT / "scripts" / "compose-env", root / "scripts" / "compose-env")
    env = {"PATH": os.environ["PATH"], **(environment or {})}
    done = subprocess.run([root / "scripts" / "compose-env"], env=env, capture_output=True,
                          text=True, timeout=30, check=True)  # fmt: skip
    return done.stdout


def _dotenv(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_compose_env_writes_each_missing_password_once_readable_by_its_owner_only(
    tmp_path: Path,
) -> None:
    kept = secrets.token_hex(4)
    (tmp_path / ".env").write_text(f"TASKHUB_FLOWER__PASSWORD={kept}")  # no newline at the end
    (tmp_path / ".env").chmod(0o600)
    printed = _run_compose_env(tmp_path, {"GRAFANA_ADMIN_PASSWORD": "exported"})
    first = _dotenv(tmp_path / ".env")
    assert first["TASKHUB_FLOWER__PASSWORD"] == kept
    assert "GRAFANA_ADMIN_PASSWORD" not in first  # the environment already gives it
    for name in ("REDIS_PASSWORD", "TASKHUB_MQTT__PASSWORD"):
        assert re.fullmatch(r"[0-9a-f]{32}", first[name]), name  # safe inside a Redis URL
        assert first[name] not in printed
    _run_compose_env(tmp_path)
    second = _dotenv(tmp_path / ".env")
    assert {name: second[name] for name in first} == first
    assert set(second) == set(SECRETS)

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    _run_compose_env(fresh)
    assert stat.S_IMODE((fresh / ".env").stat().st_mode) == 0o600
    assert set(_dotenv(fresh / ".env")) == set(SECRETS)


@pytest.mark.e2e  # runs docker compose
def test_compose_starts_on_what_compose_env_writes(tmp_path: Path) -> None:
    _run_compose_env(tmp_path)
    written = _dotenv(tmp_path / ".env")
    resolved(compose_file(), written)  # no MissingVariable
    taskhub_lines = {name for name in written if name.startswith("TASKHUB_")}
    assert taskhub_lines <= known_variables()  # taskhub refuses unknown TASKHUB_ lines
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no docker compose here to check the file with")
    check = subprocess.run(
        [*cli, "--env-file", str(tmp_path / ".env"), "-f", str(COMPOSE_FILE), "config", "-q"],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr


def _bridge_env(manifest: Path) -> dict[str, dict[str, Any]]:
    [bridge] = [doc for doc in yaml.safe_load_all(manifest.read_text())
                if doc and doc["kind"] == "StatefulSet"]  # fmt: skip
    [container] = bridge["spec"]["template"]["spec"]["containers"]
    return {entry["name"]: entry for entry in container["env"]}


def test_kubernetes_bridge_does_not_start_without_mqtt_credentials() -> None:
    env = _bridge_env(ROOT / "deploy" / "kubernetes" / "bridge.yaml")
    for name in ("TASKHUB_MQTT__USERNAME", "TASKHUB_MQTT__PASSWORD"):
        reference = env[name]["valueFrom"]["secretKeyRef"]
        assert not reference.get("optional", False), f"{name} must be required"
