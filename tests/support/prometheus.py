"""A real Prometheus server for end-to-end tests: the repo's deploy/prometheus/prometheus.yml with
its jobs pointed at the test's processes, scraping every second, and its HTTP query API.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import urllib3
import yaml

from rig.isolation import free_port
from rig.processes import Process, wait_for

DEPLOYED_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "prometheus.yml"
SCRAPE_INTERVAL = "1s"
START_TIMEOUT = 30.0
HTTP_TIMEOUT = 5.0

Sample = dict[str, Any]
"""One element of a query's `data.result`: `{"metric": {labels}, "value": [time, "text"]}`."""


def config_scraping(
    targets: Mapping[str, Sequence[str]], rule_files: Sequence[Path]
) -> dict[str, Any]:
    """The deployed config, each job scraping `targets[job]` (host:port) instead of its compose
    service, every second; rule files by absolute path."""
    config: dict[str, Any] = yaml.safe_load(DEPLOYED_CONFIG.read_text())
    config["global"].update(scrape_interval=SCRAPE_INTERVAL, evaluation_interval=SCRAPE_INTERVAL)
    config["rule_files"] = [str(path) for path in rule_files]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(targets) <= set(jobs), (
        f"no such jobs in {DEPLOYED_CONFIG}: {set(targets) - set(jobs)}"
    )
    for name, job in jobs.items():
        for key in [key for key in job if key.endswith("_sd_configs")]:
            del job[key]
        job["static_configs"] = [{"targets": list(targets.get(name, []))}]
    return config


class PrometheusServer:
    """`prometheus` on a free loopback port with its data in `directory`."""

    def __init__(self, directory: Path, config: Mapping[str, Any]) -> None:
        binary = shutil.which("prometheus")
        assert binary, "prometheus is missing: scripts/system-packages installs it"
        directory.mkdir(parents=True, exist_ok=True)
        config_file = directory / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(dict(config), sort_keys=False))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = Process(
            "prometheus",
            [
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            directory,
            {},
        )

    def start(self) -> PrometheusServer:
        self.process.start()
        wait_for(self._ready, START_TIMEOUT, "prometheus to answer /-/ready")
        return self

    def stop(self) -> None:
        self.process.kill()

    def _ready(self) -> bool:
        self.process.raise_if_exited()
        try:
            return self._get("/-/ready").status == 200
        except urllib3.exceptions.HTTPError:
            return False

    def _get(self, path: str, **params: str) -> urllib3.BaseHTTPResponse:
        return urllib3.request(
            "GET", self.url + path, fields=params, timeout=HTTP_TIMEOUT, retries=False
        )

    def api(self, path: str, **params: str) -> Any:
        """The `data` of a successful answer from /api/v1/<path>."""
        body = self._get(f"/api/v1/{path}", **params).json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> list[Sample]:
        """An instant query's samples."""
        return list(self.api("query", query=promql)["result"])

    def values_by(self, promql: str, label: str) -> dict[str, float]:
        """An instant query's values keyed by one label."""
        return {sample["metric"][label]: float(sample["value"][1]) for sample in self.query(promql)}
