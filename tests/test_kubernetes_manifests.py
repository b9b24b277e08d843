"""deploy/kubernetes checked as data, since no cluster runs here: every file parses, every object
matches the Kubernetes or KEDA schema, and the workers agree with the route table and settings.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from pydantic import BaseModel, SecretStr

from bridge.loop import SHUTDOWN_GRACE_SECONDS
from taskhub.routes import ROUTES, RouteTable, WorkerPool
from taskhub.settings import Settings, TaskSettings, known_variables
from tests.support import keda_schema

ROOT = Path(__file__).resolve().parent.parent
MANIFEST_DIR = ROOT / "deploy/kubernetes"
KUSTOMIZATION = "kustomization.yaml"
EXAMPLE_SECRETS = "secret.example.yaml"
OLDEST_KUBERNETES = "1.30"
"""The oldest Kubernetes the manifests must apply on; they are also checked against the newest
schemas kubernetes-validate ships."""
WORKER_COMMAND = ["celery", "-A", "taskhub", "worker"]
BRIDGE_COMMAND = ["python", "-m", "bridge"]
REQUEUE_MARGIN_SECONDS = 20.0
"""What a worker needs after its soft shutdown timeout to requeue tasks and close connections."""
REDIS_PORT = 6379


@dataclass(frozen=True)
class Manifest:
    """One object from one file of deploy/kubernetes."""

    file: str
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body.get("kind"))

    @property
    def name(self) -> str:
        return str(self.body.get("metadata", {}).get("name"))

    @property
    def is_keda(self) -> bool:
        return str(self.body.get("apiVersion", "")).startswith("keda.sh/")

    @property
    def is_kustomization(self) -> bool:
        return self.kind == "Kustomization"

    def __str__(self) -> str:
        return f"{self.file}: {self.kind}/{self.name}"


@dataclass(frozen=True)
class Worker:
    """A Deployment running `celery -A taskhub worker`, and what its command line says."""

    deployment: Manifest
    container: dict[str, Any]
    queue: str
    pool: str
    autoscale: tuple[int, int]

    @property
    def pod(self) -> dict[str, Any]:
        return dict(self.deployment.body["spec"]["template"]["spec"])


def load_manifests(directory: Path) -> list[Manifest]:
    found = []
    for path in sorted(directory.glob("*.yaml")):
        for body in yaml.safe_load_all(path.read_text()):
            if body is not None:
                found.append(Manifest(path.name, body))
    return found


@pytest.fixture(scope="module")
def manifest_dir() -> Path:
    return MANIFEST_DIR


@pytest.fixture(scope="module")
def manifests(manifest_dir: Path) -> list[Manifest]:
    return load_manifests(manifest_dir)


def _of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m.kind == kind]


def _containers(workload: Manifest) -> list[dict[str, Any]]:
    return list(workload.body["spec"]["template"]["spec"]["containers"])


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def _option(argv: list[str], *names: str) -> str | None:
    """The value of `-Q x`, `--queues x` or `--queues=x` in a command line."""
    for i, word in enumerate(argv):
        if word in names and i + 1 < len(argv):
            return argv[i + 1]
        for name in names:
            if name.startswith("--") and word.startswith(name + "="):
                return word.split("=", 1)[1]
    return None


def workers(manifests: list[Manifest]) -> list[Worker]:
    found = []
    for deployment in _of_kind(manifests, "Deployment"):
        for container in _containers(deployment):
            argv = [str(word) for word in container.get("command", []) + container.get("args", [])]
            if argv[: len(WORKER_COMMAND)] != WORKER_COMMAND:
                continue
            queue = _option(argv, "-Q", "--queues")
            pool = _option(argv, "-P", "--pool")
            autoscale = _option(argv, "--autoscale")
            assert queue, f"{deployment}: a worker without -Q consumes every queue"
            assert pool, f"{deployment}: name the pool with -P (gevent or prefork)"
            assert autoscale, f"{deployment}: start the worker with --autoscale=MAX,MIN"
            most, _, least = autoscale.partition(",")
            found.append(Worker(deployment, container, queue, pool, (int(most), int(least))))
    return found


def _scaled_objects(manifests: list[Manifest]) -> dict[str, Manifest]:
    """Each ScaledObject by the name of the workload it scales."""
    return {
        m.body["spec"]["scaleTargetRef"]["name"]: m for m in _of_kind(manifests, "ScaledObject")
    }


def _trigger(scaled_object: Manifest) -> dict[str, Any]:
    triggers = scaled_object.body["spec"]["triggers"]
    assert len(triggers) == 1, f"{scaled_object}: one Redis list trigger per worker Deployment"
    return dict(triggers[0])


def _cores(quantity: str) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _example_secrets(manifests: list[Manifest]) -> dict[str, dict[str, str]]:
    return {
        m.name: dict(m.body.get("stringData", {}))
        for m in manifests
        if m.kind == "Secret" and m.file == EXAMPLE_SECRETS
    }


def _secret_variables() -> set[str]:
    """The TASKHUB_ variables of SecretStr settings: these must come from a Secret."""
    names = set()
    blocks: list[tuple[str, type[BaseModel]]] = [("TASKHUB_", Settings)]
    while blocks:
        prefix, model = blocks.pop()
        for field, info in model.model_fields.items():
            variable = prefix + field.upper()
            annotation = info.annotation
            if annotation is SecretStr or SecretStr in typing.get_args(annotation):
                names.add(variable)
            elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
                blocks.append((variable + "__", annotation))
    return names


def _pod_specs(manifests: list[Manifest]) -> Iterator[tuple[Manifest, dict[str, Any]]]:
    for workload in manifests:
        if workload.kind in ("Deployment", "StatefulSet"):
            yield workload, workload.body["spec"]["template"]["spec"]


def _kubernetes_errors(manifest: Manifest, version: str) -> list[str]:
    try:
        kubernetes_validate.validate(manifest.body, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        where = ".".join(str(part) for part in error.path)
        return [f"{manifest} (Kubernetes {version}): {where}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [f"{manifest}: {error.message}"]
    return []


@pytest.mark.parametrize("name", sorted(path.name for path in MANIFEST_DIR.glob("*.yaml")))
def test_every_manifest_parses_as_yaml_objects_with_a_kind(manifest_dir: Path, name: str) -> None:
    documents = [d for d in yaml.safe_load_all((manifest_dir / name).read_text()) if d is not None]
    assert documents, f"{name} holds no object"
    for document in documents:
        assert isinstance(document, dict), f"{name}: {document!r} is not an object"
        assert document.get("apiVersion"), f"{name}: an object without apiVersion"
        assert document.get("kind"), f"{name}: an object without kind"


def test_every_builtin_object_matches_the_official_kubernetes_schema(
    manifests: list[Manifest],
) -> None:
    builtin = [m for m in manifests if not m.is_keda and not m.is_kustomization]
    assert {m.kind for m in builtin} >= {"Deployment", "StatefulSet", "Secret"}
    versions = (OLDEST_KUBERNETES, kubernetes_validate.latest_version())
    problems = [
        problem
        for manifest in builtin
        for version in versions
        for problem in _kubernetes_errors(manifest, version)
    ]
    assert not problems, "\n".join(problems)


def test_every_keda_object_matches_the_keda_schema(manifests: list[Manifest]) -> None:
    keda = [m for m in manifests if m.is_keda]
    assert {m.kind for m in keda} == set(keda_schema.SCHEMAS)
    problems = []
    for manifest in keda:
        schema = keda_schema.SCHEMAS.get(manifest.kind)
        if schema is None:
            problems.append(f"{manifest}: no schema for this KEDA kind in tests/support")
            continue
        jsonschema.Draft202012Validator.check_schema(schema)
        validator = jsonschema.Draft202012Validator(schema)
        for error in validator.iter_errors(manifest.body):
            where = ".".join(str(part) for part in error.absolute_path)
            problems.append(f"{manifest}: {where}: {error.message}")
    assert not problems, "\n".join(problems)


def test_every_route_queue_has_a_worker_scaled_on_its_redis_list(
    manifests: list[Manifest],
) -> None:
    found = workers(manifests)
    queues = [worker.queue for worker in found]
    assert len(queues) == len(set(queues)), f"two worker Deployments consume one queue: {queues}"
    routes = set(RouteTable(ROUTES).queues)
    assert set(queues) == routes, (
        f"worker Deployments consume {sorted(queues)}; the route queues are {sorted(routes)}"
    )
    scaled = _scaled_objects(manifests)
    assert set(scaled) == {worker.deployment.name for worker in found}
    for worker in found:
        scaled_object = scaled[worker.deployment.name]
        assert "," not in worker.queue, f"{worker.deployment}: one queue per worker Deployment"
        target = scaled_object.body["spec"]["scaleTargetRef"]
        assert target.get("kind", "Deployment") == "Deployment", scaled_object
        trigger = _trigger(scaled_object)
        assert trigger["type"] == "redis", scaled_object
        assert trigger["metadata"]["listName"] == worker.queue, (
            f"{scaled_object} counts list {trigger['metadata']['listName']!r} but its Deployment "
            f"consumes queue {worker.queue!r}"
        )


def test_each_worker_runs_the_pool_its_route_asks_for_one_process_per_core(
    manifests: list[Manifest],
) -> None:
    pools = RouteTable(ROUTES).queue_pools
    for worker in workers(manifests):
        assert worker.queue in pools, f"{worker.deployment}: -Q {worker.queue} is no route queue"
        assert worker.pool == pools[worker.queue].value, (
            f"{worker.deployment}: -P {worker.pool}, but queue {worker.queue!r} needs "
            f"{pools[worker.queue].value} workers (taskhub/routes.py)"
        )
        most, least = worker.autoscale
        assert 1 <= least <= most, f"{worker.deployment}: --autoscale={most},{least}"
        cores = _cores(worker.container["resources"]["requests"]["cpu"])
        if pools[worker.queue] is WorkerPool.GEVENT:
            assert cores == 1, f"{worker.deployment}: a gevent worker is one process on one core"
        else:
            assert most == 2 * cores, f"{worker.deployment}: prefork --autoscale=<cores*2>,1"


def test_each_scaler_asks_for_one_pod_per_pods_worth_of_backlog(
    manifests: list[Manifest],
) -> None:
    scaled = _scaled_objects(manifests)
    for worker in workers(manifests):
        spec = scaled[worker.deployment.name].body["spec"]
        metadata = _trigger(scaled[worker.deployment.name])["metadata"]
        assert int(metadata["listLength"]) == worker.autoscale[0], (
            f"{worker.deployment}: listLength should be what one pod runs at once "
            f"(--autoscale maximum {worker.autoscale[0]})"
        )
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] > 0, (
            "the list is empty whenever workers keep up; scale down only after a window"
        )


def test_worker_replicas_are_left_to_keda(manifests: list[Manifest]) -> None:
    for worker in workers(manifests):
        assert "replicas" not in worker.deployment.body["spec"], (
            f"{worker.deployment}: a replica count would undo KEDA's on every apply"
        )


def test_workers_requeue_running_tasks_on_sigterm_before_they_are_killed(
    manifests: list[Manifest],
) -> None:
    for worker in workers(manifests):
        env = _env(worker.container)
        assert env.get("REMAP_SIGTERM", {}).get("value") == "SIGQUIT", (
            f"{worker.deployment}: without REMAP_SIGTERM=SIGQUIT, SIGTERM waits for every task"
        )
        override = env.get("TASKHUB_TASKS__SOFT_SHUTDOWN_TIMEOUT", {}).get("value")
        soft_shutdown = float(override) if override else TaskSettings().soft_shutdown_timeout
        grace = worker.pod["terminationGracePeriodSeconds"]
        assert grace > soft_shutdown + REQUEUE_MARGIN_SECONDS, (
            f"{worker.deployment}: terminationGracePeriodSeconds {grace} leaves no time to "
            f"requeue after the {soft_shutdown:g} s soft shutdown"
        )


def test_no_secret_is_written_into_a_workload(manifests: list[Manifest]) -> None:
    secret_values = {
        value for keys in _example_secrets(manifests).values() for value in keys.values()
    }
    must_be_secret = _secret_variables()
    assert {"TASKHUB_BROKER_URL", "TASKHUB_RESULT_BACKEND"} <= must_be_secret
    for workload, pod in _pod_specs(manifests):
        for container in pod["containers"]:
            for name, entry in _env(container).items():
                if name in must_be_secret:
                    assert "secretKeyRef" in entry.get("valueFrom", {}), (
                        f"{workload}: {name} must come from a Secret (valueFrom.secretKeyRef)"
                    )
                value = str(entry.get("value", ""))
                assert not re.search(r"://[^/@\s]*:[^/@\s]*@", value), (
                    f"{workload}: {name} holds a URL with a password"
                )
                assert value not in secret_values, f"{workload}: {name} holds a Secret's value"
        broker = _env(_containers(workload)[0])["TASKHUB_BROKER_URL"]
        assert broker["valueFrom"]["secretKeyRef"]["name"] == "taskhub-redis", workload


def test_every_secret_reference_names_a_key_of_the_example_secrets(
    manifests: list[Manifest],
) -> None:
    secrets = _example_secrets(manifests)
    references = []
    for workload, pod in _pod_specs(manifests):
        for container in pod["containers"]:
            for name, entry in _env(container).items():
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    references.append((f"{workload} {name}", ref["name"], ref["key"]))
    for auth in _of_kind(manifests, "TriggerAuthentication"):
        for ref in auth.body["spec"]["secretTargetRef"]:
            references.append((f"{auth} {ref['parameter']}", ref["name"], ref["key"]))
    assert references
    for who, secret, key in references:
        assert key in secrets.get(secret, {}), f"{who}: {secret}/{key} is not in {EXAMPLE_SECRETS}"
    names = {auth.name for auth in _of_kind(manifests, "TriggerAuthentication")}
    for scaled_object in _of_kind(manifests, "ScaledObject"):
        assert _trigger(scaled_object)["authenticationRef"]["name"] in names, scaled_object


def test_scalers_read_the_redis_that_the_broker_url_names(manifests: list[Manifest]) -> None:
    redis_secret = _example_secrets(manifests)["taskhub-redis"]
    url = urlsplit(redis_secret["broker-url"])
    database = url.path.strip("/") or "0"
    assert url.password == redis_secret["password"], "the Secret's password and URL disagree"
    for scaled_object in _of_kind(manifests, "ScaledObject"):
        metadata = _trigger(scaled_object)["metadata"]
        address = f"{url.hostname}:{url.port or REDIS_PORT}"
        assert metadata["address"] == address, (
            f"{scaled_object}: address {metadata['address']}, but the broker URL names {address}"
        )
        assert metadata.get("databaseIndex", "0") == database, (
            f"{scaled_object}: databaseIndex vs the broker URL's DB {database}"
        )
        tls = metadata.get("enableTLS", "false") == "true"
        assert tls == (url.scheme == "rediss"), f"{scaled_object}: enableTLS vs {url.scheme}://"


def test_pods_get_no_service_link_variables_that_taskhub_would_refuse(
    manifests: list[Manifest],
) -> None:
    for workload, pod in _pod_specs(manifests):
        assert pod.get("enableServiceLinks") is False, (
            f"{workload}: a Service named taskhub-... would inject a TASKHUB_ variable"
        )


def test_every_taskhub_variable_named_is_a_real_setting(manifest_dir: Path) -> None:
    known = known_variables()
    for path in sorted([*manifest_dir.glob("*.yaml"), manifest_dir / "README.md"]):
        named = set(re.findall(r"\bTASKHUB_[A-Z0-9_]*[A-Z0-9]", path.read_text()))
        assert named <= known, f"{path.name}: {sorted(named - known)} are no taskhub settings"


def test_bridge_replicas_have_stable_distinct_client_ids_and_their_own_spool(
    manifests: list[Manifest],
) -> None:
    (bridge,) = _of_kind(manifests, "StatefulSet")
    (container,) = _containers(bridge)
    assert container["command"] == BRIDGE_COMMAND
    assert bridge.body["spec"]["replicas"] >= 2
    env = _env(container)
    for variable in (
        "TASKHUB_MQTT__SHARE_GROUP",
        "TASKHUB_MQTT__CLIENT_ID",
        "TASKHUB_BRIDGE__SPOOL_DIR",
    ):
        assert variable in env, f"{bridge}: set {variable}"
    assert env["TASKHUB_MQTT__SHARE_GROUP"]["value"], "replicas must share one subscription"
    client_id = env["TASKHUB_MQTT__CLIENT_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert client_id == "metadata.name", "the pod name is stable and differs between replicas"
    claims = {claim["metadata"]["name"] for claim in bridge.body["spec"]["volumeClaimTemplates"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    spool_dir = env["TASKHUB_BRIDGE__SPOOL_DIR"]["value"]
    assert mounts.get(spool_dir) in claims, "the spool must live on the replica's own volume"
    services = {s.name: s for s in _of_kind(manifests, "Service")}
    governing = services[bridge.body["spec"]["serviceName"]]
    assert governing.body["spec"]["clusterIP"] == "None"


def test_bridge_finishes_the_messages_in_hand_before_it_is_killed(
    manifests: list[Manifest],
) -> None:
    (bridge,) = _of_kind(manifests, "StatefulSet")
    grace = bridge.body["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > SHUTDOWN_GRACE_SECONDS


def test_kustomization_applies_every_manifest_but_the_example_secrets(
    manifest_dir: Path, manifests: list[Manifest]
) -> None:
    (kustomization,) = [m for m in manifests if m.is_kustomization]
    listed = set(kustomization.body["resources"])
    present = {path.name for path in manifest_dir.glob("*.yaml")}
    expected = present - {KUSTOMIZATION, EXAMPLE_SECRETS}
    assert listed == expected, (
        f"{KUSTOMIZATION} lists {sorted(listed)}; the directory holds {sorted(expected)}"
    )
    applied = [m for m in manifests if m.file in listed]
    assert not _of_kind(applied, "Secret"), "placeholder credentials must never be applied"


def test_kustomization_builds(manifest_dir: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl on this machine")
    built = subprocess.run(
        [kubectl, "kustomize", str(manifest_dir)], capture_output=True, text=True, timeout=60
    )
    assert built.returncode == 0, built.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(built.stdout) if d)
    listed = load_manifests(manifest_dir)
    applied = [m for m in listed if m.file not in (KUSTOMIZATION, EXAMPLE_SECRETS)]
    assert kinds == sorted(m.kind for m in applied)
