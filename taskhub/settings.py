"""Every knob taskhub has, in one validated object read from `TASKHUB_*` variables and `.env`.

A bad value stops the process at start with one line naming the variable and what is wrong.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import typing
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Self
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from taskhub import redaction

ENV_PREFIX = "TASKHUB_"
ENV_NESTED_DELIMITER = "__"

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_STANDIN_URL = "http://127.0.0.1:8700"
DEFAULT_VENUE_URL = "http://127.0.0.1:8701"


class SettingsError(Exception):
    """A setting is missing or wrong; the message is one line that says which and why."""


def _redis_url(value: SecretStr) -> SecretStr:
    scheme = urlsplit(value.get_secret_value()).scheme
    if scheme not in {"redis", "rediss", "unix"}:
        raise ValueError(
            f"must be a redis://, rediss:// or unix:// URL, not {scheme or 'no'} scheme"
        )
    return value


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ValueError("must be an http:// or https:// URL with a host")
    return value.rstrip("/")


RedisUrl = Annotated[SecretStr, AfterValidator(_redis_url)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
Seconds = Annotated[float, Field(gt=0)]

_CLIENT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_SHARE_GROUP = re.compile(r"^[^/+#]+$")


class MqttProtocol(StrEnum):
    V5 = "5"
    V311 = "3.1.1"


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


SUBSCRIPTION_QOS = (0, 1)
"""The QoS levels the bridge subscribes at."""
QOS_2_REFUSAL = (
    "the bridge acks a message only once Redis or the spool holds it, and MQTT's QoS 2 "
    "handshake acks on arrival; use 1 (duplicates are absorbed by idempotency keys)"
)
"""Why QoS 2 is refused, for the one-line start error."""


class MqttSettings(_Block):
    """How the bridge reaches the MQTT broker and keeps its session."""

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    protocol: MqttProtocol = MqttProtocol.V5
    client_id: str = "taskhub-bridge-1"
    """Stable per replica: the broker keeps this session's messages while the bridge is down."""
    session_expiry: int = Field(86_400, ge=1, le=4_294_967_294)
    """Seconds the broker keeps the session (and queues messages) after a disconnect."""
    keepalive: int = Field(30, ge=5, le=65_535)
    qos: int = 1
    """Default subscription QoS for routes that do not name one: 0 or 1 (see QOS_2_REFUSAL)."""
    share_group: str | None = None
    """When set, routes are subscribed as `$share/<group>/...` so replicas split the stream."""
    receive_maximum: int = Field(1000, ge=1, le=65_535)
    """MQTT 5 Receive Maximum: how many unacked QoS 1/2 messages the broker may send us."""
    read_ahead: int = Field(10_000, ge=1)
    """Most messages read from the socket and not yet taken by the bridge. The socket is read even
    while the bridge is paused, for keepalives; past this, messages are left unacked and fetched
    again by a reconnect (QoS 0 ones are dropped: at most once)."""
    username: str | None = None
    password: SecretStr | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    reconnect_min_delay: Seconds = 1.0
    reconnect_max_delay: Seconds = 30.0

    @field_validator("qos")
    @classmethod
    def _subscribable(cls, qos: int) -> int:
        if qos not in SUBSCRIPTION_QOS:
            raise ValueError(f"qos must be 0 or 1 (got {qos!r}): {QOS_2_REFUSAL}")
        return qos

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not _CLIENT_ID.match(self.client_id):
            raise ValueError(
                "client_id must be 1-128 characters of letters, digits and _.:- "
                f"(got {self.client_id!r})"
            )
        if self.share_group is not None and not _SHARE_GROUP.match(self.share_group):
            raise ValueError("share_group must not be empty or contain '/', '+' or '#'")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be set together")
        for path in (self.tls_ca_file, self.tls_cert_file, self.tls_key_file):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file {path} does not exist")
        if self.password is not None and self.username is None:
            raise ValueError("password is set but username is not")
        if self.reconnect_min_delay > self.reconnect_max_delay:
            raise ValueError("reconnect_min_delay must not exceed reconnect_max_delay")
        return self

    @property
    def tls(self) -> bool:
        return self.tls_ca_file is not None or self.tls_cert_file is not None


class HostPolicy(_Block):
    """How every worker together treats one upstream host."""

    rate_limit: int = Field(0, ge=0)
    """Requests per second to this host from all workers on all machines together; 0: none."""
    breaker_failures: int = Field(5, ge=1)
    """5xx answers or timeouts within `breaker_window` that open the breaker."""
    breaker_window: Seconds = 30.0
    breaker_cooldown: Seconds = 15.0
    """Seconds an open breaker holds every worker off the host before one probe is let through."""


DEFAULT_HOST_POLICY = HostPolicy()


class HttpSettings(_Block):
    """The upstream HTTP services the check-in task calls."""

    shortlink_base_url: HttpUrl = f"{DEFAULT_STANDIN_URL}/s"
    """Where a 4sq short code is expanded: `<base>/<code>` answers with a redirect."""
    venue_api_base_url: HttpUrl = f"{DEFAULT_VENUE_URL}/v2"
    """Venue API: `<base>/venues/<venue_id>` answers with JSON."""
    venue_api_key: SecretStr | None = None
    """Sent as `Authorization` to the venue API, which counts its rate limit per key."""
    connect_timeout: Seconds = 3.0
    read_timeout: Seconds = 10.0
    max_connections: int | None = Field(None, ge=1)
    """Pooled connections per worker process; default: the worker's largest concurrency."""
    hosts: dict[str, HostPolicy] = {}
    """Per upstream host (`host:port` as in its URLs): shared rate limit and circuit breaker.
    A host not named here gets HostPolicy's defaults: a breaker and no rate limit."""
    max_inline_wait: Seconds = 1.0
    """Longest a task waits in its slot for a host's turn; a longer wait defers the task."""
    cache_ttl: Seconds = 300.0
    """How long a venue document is fresh when the venue API names no `max-age`."""

    def policy(self, host: str) -> HostPolicy:
        return self.hosts.get(host) or DEFAULT_HOST_POLICY


class TaskSettings(_Block):
    """Limits every task runs under, and how fast a lost worker's tasks come back.

    A task a worker holds is unacked in Redis for its retry countdown plus its run time; the
    visibility timeout must outlast both, or Redis hands a live task to a second worker.
    """

    soft_time_limit: Seconds = 60.0
    time_limit: Seconds = 90.0
    max_retries: int = Field(5, ge=0)
    retry_backoff_max: Seconds = 60.0
    visibility_timeout: Seconds = 300.0
    """Seconds before Redis hands an unacked task to another worker."""
    unacked_restore_interval: Seconds = 5.0
    """How often workers sweep for tasks whose visibility timeout passed (a killed worker's)."""
    soft_shutdown_timeout: Seconds = 10.0
    """On SIGTERM, how long running tasks may finish before they are requeued."""
    idempotency_window: Seconds = 7 * 86_400.0
    """How long a task's done-marker absorbs duplicates of it."""
    result_expires: Seconds = 86_400.0
    result_ttl: Seconds = 7 * 86_400.0
    """How long a task's stored effect (e.g. a resolved check-in) is kept in Redis."""
    max_worker_losses: int = Field(3, ge=1)
    """How many times one task (per retry) may lose the worker running it, a pool child or a
    whole worker dying mid-run, before its next delivery is dead-lettered as `worker_lost`."""
    worker_loss_spread: Seconds = 10.0
    """After a loss, a task waits up to this long (its own share of it) before it runs again, so
    tasks lost together with one that kills its worker do not keep running beside it (0: off)."""

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.soft_time_limit >= self.time_limit:
            raise ValueError("soft_time_limit must be less than time_limit")
        if self.visibility_timeout <= self.time_limit + self.retry_backoff_max:
            raise ValueError(
                f"visibility_timeout ({self.visibility_timeout:g}s) must exceed time_limit + "
                f"retry_backoff_max ({self.time_limit + self.retry_backoff_max:g}s), or Redis "
                "redelivers tasks that are still running or waiting to retry"
            )
        if self.idempotency_window < self.visibility_timeout:
            raise ValueError("idempotency_window must be at least visibility_timeout")
        return self


class AutoscaleSettings(_Block):
    """How a worker started with `--autoscale=MAX,MIN` sizes its pool from the backlog."""

    tick: Seconds = 0.5
    """Seconds between looks at the backlog."""
    age_target: Seconds = 1.0
    """Once the oldest queued task has waited this long, the pool grows to MAX."""
    shrink_after: Seconds = 10.0
    """Seconds the pool must have been bigger than needed before idle slots go."""


class BridgeSettings(_Block):
    """How the bridge batches, bounds and spools its work."""

    batch_size: int = Field(100, ge=1, le=10_000)
    """Most messages in one Redis transaction."""
    batch_linger_ms: float = Field(0.0, ge=0, le=10_000)
    """Extra wait for a batch to fill; 0 flushes as soon as nothing more is waiting."""
    max_in_flight: int = Field(1000, ge=1, le=65_535)
    """Most messages received but not yet acked; reading pauses at this bound."""
    high_watermark: int = Field(50_000, ge=1)
    """Stop reading MQTT when any route queue holds this many tasks."""
    low_watermark: int = Field(25_000, ge=0)
    """Read again once every route queue is down to this many."""
    memory_high_watermark: float = Field(0.9, gt=0, le=1)
    """Stop reading MQTT when Redis's used memory reaches this fraction of its maxmemory. The rest
    is headroom for the batches in hand and the workers' writes, so Redis refuses no one."""
    memory_low_watermark: float = Field(0.8, ge=0, lt=1)
    """Read again once Redis's used memory is down to this fraction of its maxmemory."""
    spool_dir: Path = Path("var/spool")
    """Where each replica keeps its durable spool (one SQLite file per client id)."""
    spool_max: int = Field(1_000_000, ge=1)
    """Most messages the spool holds; when full, the bridge stops acking."""
    redis_retry_min_delay: Seconds = 0.2
    redis_retry_max_delay: Seconds = 10.0
    max_payload_bytes: int = Field(256 * 1024, ge=1)
    """Larger payloads are dead-lettered as payload_too_large."""
    deadletter_maxlen: int = Field(100_000, ge=100)
    """Most dead letters kept (a capped Redis stream); the oldest go first."""
    deadletter_topic: str | None = Field(None, pattern=r"^[^+#\x00]+$")
    """When set, each dead letter is also published (QoS 1, JSON) to this MQTT topic."""

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.batch_size > self.max_in_flight:
            raise ValueError("batch_size must not exceed max_in_flight")
        if self.low_watermark >= self.high_watermark:
            raise ValueError("low_watermark must be below high_watermark")
        if self.memory_low_watermark >= self.memory_high_watermark:
            raise ValueError("memory_low_watermark must be below memory_high_watermark")
        if self.redis_retry_min_delay > self.redis_retry_max_delay:
            raise ValueError("redis_retry_min_delay must not exceed redis_retry_max_delay")
        return self

    def spool_path(self, client_id: str) -> Path:
        return self.spool_dir / f"{client_id}.sqlite3"


class StandinSettings(_Block):
    """The local stand-in for the short-link and venue HTTP services."""

    host: str = "127.0.0.1"
    port: int = Field(8700, ge=0, le=65535)
    """Short-link service port; 0 picks a free one."""
    venue_port: int = Field(8701, ge=0, le=65535)
    """Venue API port (a separate host in real life); 0 picks a free one."""
    latency_ms: float = Field(20.0, ge=0)
    """Mean added latency per request, jittered 0.5x-1.5x."""
    error_rate: float = Field(0.0, ge=0, le=1)
    """Share of requests answered 503."""
    tail_rate: float = Field(0.0, ge=0, le=1)
    """Share of requests that take `tail_ms` instead of the usual latency."""
    tail_ms: float = Field(1000.0, ge=0)
    """Latency of the slow tail, milliseconds."""
    rate_limit: float = Field(0.0, ge=0)
    """Venue API requests per second per client (`Authorization` value), sliding window; 0: off."""
    venue_max_age: int = Field(300, ge=0)
    """`Cache-Control: max-age` of venue documents, seconds."""

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.port == self.venue_port and self.port != 0:
            raise ValueError(f"port and venue_port must differ (both are {self.port})")
        return self


class FlowerSettings(_Block):
    """Flower, always behind HTTP basic auth (flowerconfig.py reads these)."""

    address: str = "127.0.0.1"
    port: int = Field(5555, ge=1, le=65535)
    username: str = Field("taskhub", pattern=r"^[^:\s]+$")
    password: SecretStr | None = None
    """Required to start Flower; scripts/demo makes one up and prints it."""


class TelemetrySettings(_Block):
    """Metrics and probes: the bridge's and each worker's `/metrics`, `/healthz`, `/readyz`
    (docs/observability.md)."""

    address: str = "127.0.0.1"
    """Where the probe servers listen; 0.0.0.0 in a container so Prometheus can reach them."""
    bridge_port: int = Field(9181, ge=0, le=65535)
    """The bridge's probe port; 0 turns its server off."""
    worker_port: int = Field(9182, ge=0, le=65535)
    """A worker's probe port (one per worker on a host); 0 turns its server off."""
    stall_after: Seconds = 30.0
    """A worker whose consumer neither polled the broker nor finished a task for this long is
    not ready: its process lives, but it takes no work (Celery #7276, #8030, #10302)."""
    beat_interval: Seconds = 2.0
    """How often bridges and workers record their state in Redis for `taskhub status`."""


class ReplySettings(_Block):
    """Replies to MQTT 5 requests (docs/requests.md)."""

    allowed_topics: tuple[str, ...] = ("replies/#",)
    """MQTT topic filters, below TASKHUB_TOPIC_PREFIX, that a request's Response Topic must
    match; any other is refused and dead-lettered (response_topic_refused), so no client can make
    taskhub publish where it likes. Empty refuses every request."""
    outbox_maxlen: int = Field(100_000, ge=1)
    """Replies the outbox stream keeps waiting to be published, approximately (XADD MAXLEN ~): past
    it the oldest are dropped, so replies nobody publishes (every bridge down) cannot fill Redis."""


class TracingSettings(_Block):
    """OpenTelemetry traces from publish to HTTP call (docs/tracing.md). Off by default."""

    enabled: bool = False
    """Trace every message; on too whenever OTEL_EXPORTER_OTLP_ENDPOINT is set."""


class Settings(BaseSettings):
    """taskhub's whole configuration. Nested blocks read `TASKHUB_<BLOCK>__<FIELD>`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        env_file=".env",
        dotenv_filtering="match_prefix",  # a .env may hold other programs' variables too
        extra="forbid",
        frozen=True,
    )

    broker_url: RedisUrl = SecretStr(DEFAULT_REDIS_URL)
    result_backend: RedisUrl = SecretStr(DEFAULT_REDIS_URL)
    store_url: RedisUrl | None = None
    """Redis of the effect store: task effects (e.g. resolved check-ins), their done-markers, and
    the caches, breakers and rate limits workers share; defaults to broker_url."""
    key_prefix: str = Field("taskhub", pattern=r"^[A-Za-z0-9_.-]+$")
    """Prefix of every Redis key taskhub writes besides Celery's own."""
    topic_prefix: str = Field("", pattern=r"^([^+#\x00]+/)?$")
    """Prepended to every route's topic pattern (ends with '/'); isolates tenants and test runs."""
    routes: str = Field("taskhub.routes:ROUTES", pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    """Where the route table is declared, as `module:NAME` (a tuple of taskhub.routes.Route)."""
    mqtt: MqttSettings = MqttSettings()
    http: HttpSettings = HttpSettings()
    tasks: TaskSettings = TaskSettings()
    autoscale: AutoscaleSettings = AutoscaleSettings()
    bridge: BridgeSettings = BridgeSettings()
    standin: StandinSettings = StandinSettings()
    flower: FlowerSettings = FlowerSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    replies: ReplySettings = ReplySettings()
    tracing: TracingSettings = TracingSettings()

    @property
    def store_redis_url(self) -> str:
        return (self.store_url or self.broker_url).get_secret_value()

    def secret_values(self) -> list[str]:
        """Every secret these settings hold: a SecretStr's value, or a URL's password."""
        values: list[str] = []
        for location in _secret_locations():
            secret: Any = self
            for name in location:
                secret = getattr(secret, name)
            if secret is not None:
                text = secret.get_secret_value()
                # A URL is no secret (its host is worth seeing in a log); its password is.
                values += redaction.secrets_in_url(text) if "://" in text else [text]
        return values


def _variable_name(location: tuple[int | str, ...]) -> str:
    names = [str(part) for part in location if not isinstance(part, int)]
    match names:
        case ["http", "hosts", host, *inside]:  # a JSON value keyed by host
            return f"{ENV_PREFIX}HTTP__HOSTS[{host!r}]" + "".join(f".{n}" for n in inside)
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(names).upper()


def _is_secret(annotation: Any) -> bool:
    return annotation is SecretStr or any(_is_secret(arg) for arg in typing.get_args(annotation))


@functools.cache
def _secret_locations() -> frozenset[tuple[str, ...]]:
    """Where the SecretStr settings sit, as pydantic's error locations name them."""
    found: set[tuple[str, ...]] = set()
    for name, info in Settings.model_fields.items():
        if _is_secret(info.annotation):
            found.add((name,))
        block = info.annotation
        if isinstance(block, type) and issubclass(block, BaseModel):
            found.update(
                (name, field)
                for field, inner in block.model_fields.items()
                if _is_secret(inner.annotation)
            )
    return frozenset(found)


def _may_hold_a_secret(location: tuple[int | str, ...]) -> bool:
    """True for a SecretStr setting, or a whole block given as one value that holds one."""
    names = tuple(str(part) for part in location if not isinstance(part, int))
    return any(
        names[: len(secret)] == secret or secret[: len(names)] == names
        for secret in _secret_locations()
    )


def _describe(error: dict[str, Any]) -> str:
    variable = _variable_name(error["loc"])
    if error["type"] == "extra_forbidden":
        return f"{variable}: is not a taskhub setting"
    message = redaction.redact(str(error["msg"]).removeprefix("Value error, "))
    value = error.get("input")
    if _may_hold_a_secret(error["loc"]):
        return f"{variable}: {message}"  # a secret is never shown, not even masked
    if isinstance(value, str):
        return f"{variable}: {message} (got {redaction.redact(value)!r})"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{variable}: {message} (got {value!r})"
    return f"{variable}: {message}"


def known_variables() -> set[str]:
    """Every TASKHUB_ variable name a setting reads, nested blocks included."""
    names: set[str] = set()
    for name, info in Settings.model_fields.items():
        variable = ENV_PREFIX + name.upper()
        names.add(variable)
        block = info.annotation
        if isinstance(block, type) and issubclass(block, BaseModel):
            names.update(
                variable + ENV_NESTED_DELIMITER + field.upper() for field in block.model_fields
            )
    return names


def _unknown_variables() -> list[str]:
    """TASKHUB_ variables no setting reads: a typo would otherwise be silently ignored."""
    known = known_variables()
    problems = []
    for variable in sorted(os.environ):
        if variable.upper().startswith(ENV_PREFIX) and variable.upper() not in known:
            close = difflib.get_close_matches(variable.upper(), known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(f"{variable}: is not a taskhub setting{hint}")
    return problems


def load_settings(**overrides: Any) -> Settings:
    """Read and validate settings, raising SettingsError with one line on anything wrong."""
    unknown = _unknown_variables()
    if unknown:
        raise SettingsError("; ".join(unknown))
    try:
        return Settings(**overrides)
    except ValidationError as error:
        problems = [_describe(dict(item)) for item in error.errors()]
        raise SettingsError("; ".join(problems)) from None


@functools.cache
def get_settings() -> Settings:
    """The process's settings, read once; their secrets are masked in all it logs from then on."""
    settings = load_settings()
    redaction.remember(settings.secret_values())
    return settings


def settings_or_exit() -> Settings:
    """Settings for an entry point: a bad value ends the process with one line, no traceback."""
    try:
        return get_settings()
    except SettingsError as error:
        raise SystemExit(f"taskhub: bad configuration: {error}") from None
