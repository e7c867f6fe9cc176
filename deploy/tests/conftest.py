"""Fixtures: the real pum standalone server and a real Prometheus scraping it,
both on free loopback ports with temporary data, always stopped at the end."""

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

TESTS = Path(__file__).resolve().parent
DEPLOY = TESTS.parent
REPO = DEPLOY.parent
SCRAPE_INTERVAL = 1  # seconds: the end-to-end test waits for a few scrapes


def pum_binary():
    return Path(os.environ.get("PUM_COLLECTOR_BIN", REPO / "target" / "release" / "pum-collector"))


def tool(name):
    path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} is not installed (Debian: apt-get install prometheus)")
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, headers=None, timeout=10):
    """(status, headers, body bytes); HTTP errors are answers, not exceptions."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def wait_until(what, check, timeout=30.0, interval=0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, urllib.error.URLError) as e:
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


class Server:
    """A child process with its log in a file; stop() ends it (and only it)."""

    def __init__(self, name, argv, log_path):
        self.name = name
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def check_alive(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.read_log()}")

    def read_log(self):
        self.log.flush()
        return Path(self.log_path).read_text(errors="replace")[-4000:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


class Pum:
    def __init__(self, server, ingest, metrics):
        self.server = server
        self.ingest = ingest
        self.metrics = metrics

    def push(self, body, content_type="application/json"):
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        status, _, answer = http("POST", f"{self.ingest}/record", data, {"Content-Type": content_type})
        return status, json.loads(answer) if answer else None

    def scrape(self):
        status, _, body = http("GET", f"{self.metrics}/metrics")
        assert status == 200
        return body.decode()


class Prometheus:
    def __init__(self, server, url):
        self.server = server
        self.url = url

    def api(self, path, **params):
        status, _, body = http("GET", f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}")
        doc = json.loads(body)
        return status, doc

    def query(self, expr, at=None):
        """An instant query; fails the test on any error, returns the result list."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        status, doc = self.api("query", **params)
        assert status == 200 and doc["status"] == "success", f"{expr}: {doc}"
        return doc["data"]["result"]

    def query_range(self, expr, start, end, step):
        status, doc = self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=step)
        assert status == 200 and doc["status"] == "success", f"{expr}: {doc}"
        return doc["data"]["result"]

    def value(self, expr, at=None):
        """The single value of an expression (None when it returns nothing)."""
        result = self.query(expr, at)
        if not result:
            return None
        assert len(result) == 1, f"{expr}: more than one series: {result}"
        return float(result[0]["value"][1])


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("pum-e2e")


@pytest.fixture(scope="session")
def pum(workdir):
    binary = pum_binary()
    if not binary.exists():
        pytest.fail(f"{binary} is missing: cargo build --release -p pum-collector (or set PUM_COLLECTOR_BIN)")
    ingest_port, metrics_port = free_port(), free_port()
    argv = [
        str(binary),
        "standalone",
        "--config", str(REPO / "examples" / "allowlist"),
        "--ingest-listen", f"127.0.0.1:{ingest_port}",
        "--metrics-listen", f"127.0.0.1:{metrics_port}",
        "--data-dir", str(workdir / "pum-data"),
    ]
    server = Server("pum-collector", argv, workdir / "pum.log")
    try:
        p = Pum(server, f"http://127.0.0.1:{ingest_port}", f"http://127.0.0.1:{metrics_port}")

        def healthy():
            server.check_alive()
            return http("GET", f"{p.ingest}/healthz")[0] == 200

        wait_until("pum /healthz", healthy)
        yield p
    finally:
        server.stop()


@pytest.fixture(scope="session")
def prometheus(pum, workdir):
    """Prometheus with deploy/prometheus/prometheus.yml, pointed at the test pum
    and scraping every second, with deploy/prometheus/rules.yml loaded."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = f"{SCRAPE_INTERVAL}s"
    config["global"]["evaluation_interval"] = f"{SCRAPE_INTERVAL}s"
    config["rule_files"] = [str(DEPLOY / "prometheus" / "rules.yml")]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "pum"]
    job["static_configs"] = [{"targets": [pum.metrics.removeprefix("http://")]}]
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))

    port = free_port()
    argv = [
        tool("prometheus"),
        f"--config.file={config_path}",
        f"--storage.tsdb.path={workdir / 'prometheus-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    server = Server("prometheus", argv, workdir / "prometheus.log")
    try:
        prom = Prometheus(server, f"http://127.0.0.1:{port}")

        def ready():
            server.check_alive()
            return http("GET", f"{prom.url}/-/ready")[0] == 200

        wait_until("Prometheus /-/ready", ready)
        wait_until("the first scrape of pum", lambda: prom.value('up{job="pum"}') == 1)
        yield prom
    finally:
        server.stop()
