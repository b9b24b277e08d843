"""Settings: env variables with nested blocks and .env, and one clear line for a bad value."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from taskhub.redaction import MASK, redact
from taskhub.settings import MqttProtocol, SettingsError, load_settings

ROOT = Path(__file__).resolve().parent.parent


def test_nested_blocks_read_double_underscore_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKHUB_MQTT__PORT", "8883")
    monkeypatch.setenv("TASKHUB_MQTT__PROTOCOL", "3.1.1")
    monkeypatch.setenv("TASKHUB_BRIDGE__BATCH_SIZE", "7")
    settings = load_settings()
    assert settings.mqtt.port == 8883
    assert settings.mqtt.protocol is MqttProtocol.V311
    assert settings.bridge.batch_size == 7


def test_dotenv_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASKHUB_MQTT__CLIENT_ID", raising=False)
    (tmp_path / ".env").write_text("TASKHUB_MQTT__CLIENT_ID=from-dotenv\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings().mqtt.client_id == "from-dotenv"


def test_a_dotenv_shared_with_other_programs_is_read_for_taskhub_variables_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docker compose reads the same .env (e.g. GRAFANA_ADMIN_PASSWORD); taskhub must not refuse
    to start over another program's variable, but still names a misspelt one of its own."""
    monkeypatch.delenv("TASKHUB_MQTT__CLIENT_ID", raising=False)
    dotenv = tmp_path / ".env"
    dotenv.write_text("GRAFANA_ADMIN_PASSWORD=x\nTASKHUB_MQTT__CLIENT_ID=shared\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings().mqtt.client_id == "shared"

    dotenv.write_text("TASKHUB_MQTT__CLIENT_IDD=typo\n")
    with pytest.raises(SettingsError, match=r"^TASKHUB_MQTT__CLIENT_IDD: is not a taskhub setting"):
        load_settings()


@pytest.mark.parametrize(
    ("variable", "value", "complaint"),
    [
        ("TASKHUB_MQTT__PORT", "70000", "TASKHUB_MQTT__PORT: Input should be less than or equal"),
        ("TASKHUB_MQTT__QOS", "3", "TASKHUB_MQTT__QOS"),
        ("TASKHUB_MQTT__PROTOCOL", "4", "TASKHUB_MQTT__PROTOCOL: Input should be '5' or '3.1.1'"),
        ("TASKHUB_BROKER_URL", "http://x", "TASKHUB_BROKER_URL: must be a redis://"),
        ("TASKHUB_TASKS__VISIBILITY_TIMEOUT", "60", "must exceed time_limit"),
        ("TASKHUB_MQTT__SHARE_GROUP", "a/b", "share_group must not"),
        ("TASKHUB_MQTT__TLS_CA_FILE", "/nope.pem", "TLS file /nope.pem does not exist"),
        ("TASKHUB_TOPIC_PREFIX", "no-slash", "TASKHUB_TOPIC_PREFIX"),
        ("TASKHUB_NO_SUCH_THING", "1", "TASKHUB_NO_SUCH_THING: is not a taskhub setting"),
        (
            "TASKHUB_HTTP__HOSTS",
            '{"api.example.com": {"rate_limit": 0.5}}',
            "TASKHUB_HTTP__HOSTS['api.example.com'].rate_limit: Input should be a valid integer",
        ),
        ("TASKHUB_HTTP__HOSTS", '{"a.example": {"burst": 3}}', "['a.example'].burst: is not a"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, complaint: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    message = str(raised.value)
    assert complaint in message
    assert "\n" not in message


def test_passwords_stay_out_of_reprs_errors_and_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKHUB_MQTT__USERNAME", "bridge")
    monkeypatch.setenv("TASKHUB_MQTT__PASSWORD", "hunter2-mqtt")
    monkeypatch.setenv("TASKHUB_BROKER_URL", "redis://:hunter2-redis@127.0.0.1:6379/3")
    settings = load_settings()
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings.model_dump())
    assert redact(settings.broker_url.get_secret_value()) == "redis://:***@127.0.0.1:6379/3"
    monkeypatch.setenv("TASKHUB_MQTT__PORT", "-1")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert "hunter2" not in str(raised.value)


def test_a_secret_setting_is_never_shown_in_a_start_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Masked by what the setting is (SecretStr), not by its name: an API key is no 'password'."""
    monkeypatch.setenv("TASKHUB_HTTP", '{"venue_api_key": 73911204}')  # a number, not a string
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert str(raised.value) == "TASKHUB_HTTP__VENUE_API_KEY: Input should be a valid string"


@pytest.mark.e2e  # starts the CLI
def test_taskhub_config_shows_the_urls_in_use_and_no_secret() -> None:
    env = {
        **os.environ,
        "TASKHUB_BROKER_URL": "redis://:hunter2@redis@127.0.0.1:6379/3?password=hunter2q",
        "TASKHUB_MQTT__USERNAME": "bridge",
        "TASKHUB_MQTT__PASSWORD": "hunter2-mqtt",
        "TASKHUB_HTTP__VENUE_API_KEY": "hunter2-key",
        "TASKHUB_HTTP__SHORTLINK_BASE_URL": "http://bob:hunter2-link@short.example/s",
    }
    env.pop("TASKHUB_STORE_URL", None)
    argv = [sys.executable, "-m", "taskhub.cli", "config"]
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "hunter2" not in done.stdout + done.stderr
    shown = json.loads(done.stdout)
    assert shown["broker_url"] == "redis://:***@127.0.0.1:6379/3?password=***"
    assert shown["store_url"] == shown["broker_url"]  # the URL in use, not null
    assert shown["mqtt"]["username"] == "bridge"
    assert shown["mqtt"]["password"] == shown["http"]["venue_api_key"] == MASK
    assert shown["http"]["shortlink_base_url"] == "http://bob:***@short.example/s"
    assert (
        done.stderr.strip()
        == "taskhub config: store_url is broker_url (TASKHUB_STORE_URL is not set)"
    )


@pytest.mark.parametrize(
    "argv",
    [
        [sys.executable, "-m", "bridge"],
        [sys.executable, "-m", "celery", "-A", "taskhub", "worker"],
        [sys.executable, "-m", "taskhub.cli", "routes"],
    ],
    ids=["bridge", "celery-worker", "cli"],
)
@pytest.mark.e2e  # starts each entry point
def test_every_entry_point_stops_at_start_with_one_line(argv: list[str]) -> None:
    env = {**os.environ, "TASKHUB_MQTT__PORT": "not-a-port"}
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert lines == [
        "taskhub: bad configuration: TASKHUB_MQTT__PORT: Input should be a valid integer, "
        "unable to parse string as an integer (got 'not-a-port')"
    ]
