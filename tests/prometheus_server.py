"""A real Prometheus server for the tests: Debian's ``prometheus`` package, started on a free
loopback port with a scrape configuration of the test's, queried over its HTTP API, stopped
afterwards. A machine without it fails the test with how to install it, never a silent pass.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from busmon.bus.brokers_local import free_port
from tests import helpers

INSTALL = ("install Debian's prometheus package (apt-get update && apt-get install -y prometheus: "
           "prometheus and promtool), or put both on PATH; .ci/run installs them")
#: how long Prometheus gets to start, and a test to see what it waits for
START_S = 30.0
WAIT_S = 60.0


def binary(name: str) -> str:
    """``prometheus`` or ``promtool``: on PATH, or where Debian puts it; else the test fails."""
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if found is None:
        pytest.fail(f"{name} not found: {INSTALL}", pytrace=False)
    return found


#: Prometheus is another process: its state is polled, a fifth of a second apart
poll = functools.partial(helpers.poll, timeout=WAIT_S, every=0.2)


class Prometheus:
    """One Prometheus server on 127.0.0.1, scraping ``targets`` every second."""

    def __init__(self, tmp: Path, jobs: dict[str, list[str]], rule_files: list[Path] = ()) -> None:  # type: ignore[assignment]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}
                               for job, targets in jobs.items()],
        }
        path = tmp / "prometheus.yml"
        path.write_text(json.dumps(config))  # YAML is a superset of JSON
        self.log = (tmp / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [binary("prometheus"), f"--config.file={path}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            poll(self._ready, "prometheus ready", timeout=START_S)
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.proc.returncode}: see {self.log.name}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> dict[str, float]:
        """An instant query: each series' ``instance`` (and other labels, if several) → value."""
        out: dict[str, float] = {}
        for item in self.api("query", query=expr)["result"]:
            labels = item["metric"]
            out[labels.get("instance", json.dumps(labels, sort_keys=True))] = float(item["value"][1])
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.log.close()
