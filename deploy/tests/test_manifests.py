"""Kubernetes manifests, compose file and Dockerfile, checked by real validators
that ship their schemas (nothing is downloaded at run time):

- kubernetes-validate (strict: unknown fields are errors) for Kubernetes' own kinds,
  against the oldest and the newest Kubernetes it knows;
- the prometheus-operator models of cloudcoil (generated from the operator's
  CRDs) for the ServiceMonitor;
- check-jsonschema with its bundled Compose specification schema;
- hadolint for the Dockerfile.

Each validator is also shown rejecting a broken copy, so a validator that
checks nothing cannot pass.
"""

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

from conftest import DEPLOY, REPO, pum_binary

K8S = DEPLOY / "kubernetes"
VENV_BIN = Path(sys.executable).parent
CORE_FILES = ["configmap.yaml", "deployment.yaml", "service.yaml"]
KUBERNETES_VERSIONS = ["1.25", kubernetes_validate.utils.latest_version()]


def docs(name):
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def resources():
    out = {}
    for name in CORE_FILES:
        for d in docs(name):
            out[(d["kind"], d["metadata"]["name"])] = d
    return out


def k8s_errors(resource, version):
    try:
        kubernetes_validate.validate(resource, version, strict=True)
        return None
    except kubernetes_validate.ValidationError as e:
        return f"{'.'.join(map(str, e.path))}: {e.message}"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", CORE_FILES)
def test_kubernetes_manifest_is_valid(name, version):
    for d in docs(name):
        # SchemaNotFoundError (an unknown kind) is an error here too.
        assert k8s_errors(d, version) is None, (name, d["kind"])


def test_kubernetes_validator_rejects_broken_manifests():
    dep = copy.deepcopy(resources()[("Deployment", "pum")])
    dep["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "3000"
    assert k8s_errors(dep, KUBERNETES_VERSIONS[-1])
    dep = copy.deepcopy(resources()[("Deployment", "pum")])
    dep["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    assert k8s_errors(dep, KUBERNETES_VERSIONS[-1])


def servicemonitor_errors(doc):
    """Validates against the operator's CRD-generated model; fields the model
    does not know are errors too (as kubectl --validate=strict makes them)."""
    try:
        model = ServiceMonitor.model_validate(doc)
    except Exception as e:  # pydantic.ValidationError
        return str(e)
    known = model.model_dump(by_alias=True, exclude_unset=True, mode="json")

    def unknown(given, seen, path):
        if isinstance(given, dict):
            out = []
            for k, v in given.items():
                if not isinstance(seen, dict) or k not in seen:
                    out.append(f"{path}.{k}")
                else:
                    out += unknown(v, seen[k], f"{path}.{k}")
            return out
        if isinstance(given, list) and isinstance(seen, list):
            return [e for i, (g, s) in enumerate(zip(given, seen)) for e in unknown(g, s, f"{path}[{i}]")]
        return []

    bad = unknown(doc, known, "")
    return f"unknown fields: {bad}" if bad else None


def test_servicemonitor_is_valid():
    (sm,) = docs("servicemonitor.yaml")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1" and sm["kind"] == "ServiceMonitor"
    assert servicemonitor_errors(sm) is None


def test_servicemonitor_validator_rejects_broken_ones():
    (sm,) = docs("servicemonitor.yaml")
    bad = copy.deepcopy(sm)
    bad["spec"]["endpoints"][0]["interval"] = "fifteen seconds"
    assert servicemonitor_errors(bad)
    bad = copy.deepcopy(sm)
    bad["spec"]["endpoints"][0]["intervl"] = "15s"
    assert servicemonitor_errors(bad)
    bad = copy.deepcopy(sm)
    del bad["spec"]["selector"]
    assert servicemonitor_errors(bad)


def test_kubernetes_objects_fit_together():
    r = resources()
    dep, svc, cm = r[("Deployment", "pum")], r[("Service", "pum")], r[("ConfigMap", "pum-allowlist")]
    pod = dep["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    # One process owns the data dir at a time.
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for p in svc["spec"]["ports"]:
        assert p["targetPort"] in ports
    # The annotations the original README promised, on the metrics port.
    ann = svc["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert int(ann["prometheus.io/port"]) == ports["metrics"]
    assert ann["prometheus.io/path"] == "/metrics"
    # Listening on every interface, on the declared ports.
    args = " ".join(container["args"])
    assert f"--ingest-listen=0.0.0.0:{ports['http']}" in args
    assert f"--metrics-listen=0.0.0.0:{ports['metrics']}" in args
    # Readiness asks the ingest (503 while the store cannot write durably); liveness the metrics
    # port, so a pod whose store failed is taken out of rotation, not restarted.
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    # The grace period outlasts pum's shutdown deadline (PUM_SHUTDOWN_TIMEOUT, 10 s by default).
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    shutdown = int(env.get("PUM_SHUTDOWN_TIMEOUT", "10s").rstrip("s"))
    assert pod["spec"]["terminationGracePeriodSeconds"] >= shutdown + 10
    # Behind a Service or an Ingress, the rate limit must see the browser's address.
    assert env["PUM_CLIENT_IP_HEADER"] == "X-Forwarded-For"
    # Volumes point at objects that exist.
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert vols["allowlist"]["configMap"]["name"] == cm["metadata"]["name"]
    assert ("PersistentVolumeClaim", vols["data"]["persistentVolumeClaim"]["claimName"]) in r
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert f"--config={mounts['allowlist']}" in args and f"--data-dir={mounts['data']}" in args
    # The ServiceMonitor finds the Service and its metrics port; job="pum" follows from the name.
    (sm,) = docs("servicemonitor.yaml")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert svc["metadata"]["name"] == "pum"
    # kustomization.yaml applies every core manifest.
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == sorted(CORE_FILES)


def test_configmap_allowlist_is_accepted_by_pum(tmp_path):
    """pum's own config check reads the ConfigMap's files laid out as the kubelet
    mounts them: each key a symlink through ..data into a timestamped folder."""
    binary = pum_binary()
    if not binary.exists():
        pytest.fail(f"{binary} is missing: cargo build --release -p pum-collector")
    (cm,) = docs("configmap.yaml")
    mount = tmp_path / "allowlist"
    (mount / "..2026_01_01_00_00_00.000000000").mkdir(parents=True)
    (mount / "..data").symlink_to("..2026_01_01_00_00_00.000000000")
    names = []
    for key, text in cm["data"].items():
        assert key.endswith(".json"), key
        (mount / "..data" / key).write_text(text)
        (mount / key).symlink_to(f"..data/{key}")
        names += [m["name"] for m in json.loads(text)["allowedMetrics"]]

    def check():
        return subprocess.run(
            [str(binary), "check-config", "--config", str(mount)], capture_output=True, text=True, timeout=60
        )

    run = check()
    assert run.returncode == 0, run.stdout + run.stderr
    for name in names:
        assert re.search(rf"\b{name}\b", run.stdout), f"{name} not loaded:\n{run.stdout}"
    # ... and the check catches a broken one.
    (mount / "..data" / "broken.json").write_text('{"allowedMetrics": [{"name": "x", "type": "gauge"}]}')
    (mount / "broken.json").symlink_to("..data/broken.json")
    assert check().returncode != 0


def check_compose(path):
    return subprocess.run(
        [str(VENV_BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_compose_file_is_valid():
    run = check_compose(REPO / "compose.yaml")
    assert run.returncode == 0, run.stdout + run.stderr


def test_compose_validator_rejects_a_broken_file(tmp_path):
    doc = yaml.safe_load((REPO / "compose.yaml").read_text())
    doc["services"]["pum"]["ports"] = {"3000": "3000"}
    doc["services"]["pum"]["restart_policy"] = "always"
    broken = tmp_path / "compose.yaml"
    broken.write_text(yaml.safe_dump(doc))
    assert check_compose(broken).returncode != 0


def test_compose_runs_the_whole_demo():
    doc = yaml.safe_load((REPO / "compose.yaml").read_text())
    services = doc["services"]
    assert set(services) == {"pum", "prometheus", "grafana"}
    cmd = " ".join(services["pum"]["command"])
    assert cmd.startswith("standalone") and "--ingest-listen=0.0.0.0:3000" in cmd and "--metrics-listen=0.0.0.0:9102" in cmd
    assert services["pum"]["build"] == "."
    # Every bind mount's source exists in the repository.
    for svc in services.values():
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("./"):
                assert (REPO / src).exists(), v
    # Prometheus scrapes the pum service and loads the rules beside its config.
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = prom["scrape_configs"]
    assert job["job_name"] == "pum" and job["static_configs"][0]["targets"] == ["pum:9102"]
    assert "./deploy/prometheus/rules.yml:/etc/prometheus/rules.yml:ro" in services["prometheus"]["volumes"]


def test_dockerfile_passes_hadolint():
    run = subprocess.run(
        [str(VENV_BIN / "hadolint"), "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_hadolint_rejects_a_broken_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN cd /tmp && apt-get install curl\nCMD pum-collector\n")
    run = subprocess.run([str(VENV_BIN / "hadolint"), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0


def test_dockerfile_matches_the_toolchain_and_listens_everywhere():
    text = (REPO / "Dockerfile").read_text()
    channel = re.search(r'channel\s*=\s*"([^"]+)"', (REPO / "rust-toolchain.toml").read_text()).group(1)
    assert re.search(rf"^FROM rust:{re.escape(channel)}-\S+ AS build$", text, re.M), "builder image != rust-toolchain.toml"
    assert f"RUSTUP_TOOLCHAIN={channel}" in text
    assert "cargo build --release --locked -p pum-collector" in text
    assert "PUM_INGEST_LISTEN=0.0.0.0:3000" in text and "PUM_METRICS_LISTEN=0.0.0.0:9102" in text
    ignored = (REPO / ".dockerignore").read_text().split()
    assert "**/target" in ignored and ".git" in ignored
