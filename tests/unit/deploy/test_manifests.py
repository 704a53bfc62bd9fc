"""The Kubernetes and KServe manifests under deploy/, validated offline: core resources
against the Kubernetes schemas (kubernetes-validate, strict), the kustomization rendered by
`kubectl kustomize` (no cluster needed), the custom resources (KServe, KEDA) against their
documented fields, and the settings that must agree across files."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from serving.gateway.operations import INFERENCE
from serving.properties import read_properties

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "deploy" / "kubernetes"
KSERVE = ROOT / "deploy" / "kserve"
VERSION = "1.32.0"  # preStop `sleep` is served from 1.30 (beta, on by default)
CUSTOM_KINDS = {"ServingRuntime", "InferenceService", "ScaledObject"}
IMAGE_UID = 1000  # USER in deploy/docker/Dockerfile.cpu


def documents(*folders: Path) -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for folder in folders for path in sorted(folder.glob("*.yaml"))
            if path.name != "kustomization.yaml"
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for _, d in documents(K8S, KSERVE)
             if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def validate(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, VERSION, strict=True)


def pod_with(container: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"},
            "spec": {"containers": [container], **spec}}


@pytest.mark.parametrize(("path", "doc"), [
    (p, d) for p, d in documents(K8S, KSERVE) if d["kind"] not in CUSTOM_KINDS],
    ids=lambda v: v.name if isinstance(v, Path) else "")
def test_core_resources_validate_strictly(path: Path, doc: dict[str, Any]):
    validate(doc)


def test_strict_validation_catches_a_typo():
    deployment = one("Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)


def test_kustomization_renders_offline_and_lists_every_file():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed here")
    out = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    rendered = [d for d in yaml.safe_load_all(out) if d]
    for doc in rendered:
        validate(doc)
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    alternatives = {"keda-scaledobject.yaml"}  # replaces hpa.yaml, not beside it
    assert set(listed) == {p.name for p in K8S.glob("*.yaml")} - alternatives - {
        "kustomization.yaml"}
    assert len(rendered) == len(documents(K8S)) - 1


def test_deployment_is_guaranteed_with_whole_cores_and_drains_in_its_grace_period():
    pod = one("Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert requests == limits, "requests = limits: Guaranteed QoS"
    assert str(requests["cpu"]).isdigit(), "whole cores: the static CPU manager's exclusive cores"
    config = read_properties(one("ConfigMap", "serving-config")["data"]["config.properties"])
    drain = float(config["drain_timeout"])
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + 10
    security = pod["securityContext"]
    assert security["runAsNonRoot"] and security["runAsUser"] == IMAGE_UID
    assert pod["enableServiceLinks"] is False


def test_probes_use_the_servers_readiness_and_liveness_routes():
    (container,) = one("Deployment")["spec"]["template"]["spec"]["containers"]
    served = set(INFERENCE)
    assert container["readinessProbe"]["httpGet"]["path"] == "/ping"
    assert container["livenessProbe"]["httpGet"]["path"] == "/live"
    assert container["startupProbe"]["httpGet"]["path"] == "/live"
    assert {"/ping", "/live"} <= served
    names = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert set(names.values()) == {8080, 8081, 8082, 7070, 7071}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert names[container[probe]["httpGet"]["port"]] == 8080


def test_services_pdb_and_hpa_point_at_the_deployment():
    deployment = one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    port_names = {p["name"] for p in container["ports"]}
    services = [d for _, d in documents(K8S) if d["kind"] == "Service"]
    assert services  # otherwise the loop below checks nothing
    for service in services:
        assert service["spec"]["selector"].items() <= labels.items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    assert one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = one("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["minReplicas"] >= 2  # with the PDB's maxUnavailable 1, a drain leaves one


def test_hpa_metrics_are_the_ones_the_adapter_publishes():
    hpa = one("HorizontalPodAutoscaler")["spec"]
    wanted = {m["pods"]["metric"]["name"] for m in hpa["metrics"] if m["type"] == "Pods"}
    rules = yaml.safe_load(one("ConfigMap", "serving-adapter-rules")["data"]["config.yaml"])
    published = {r["name"]["as"] for r in rules["rules"]}
    assert wanted == published
    series = {r["seriesQuery"].split("{")[0] for r in rules["rules"]}
    # The server's queue gauge and TorchServe's queue-latency counter (metrics_address).
    assert series == {"serving_queue_depth", "ts_queue_latency_microseconds"}


def test_keda_scaled_object_matches_the_documented_fields():
    scaled = one("ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert set(spec) <= {"scaleTargetRef", "minReplicaCount", "maxReplicaCount",
                         "cooldownPeriod", "pollingInterval", "triggers", "advanced"}
    assert spec["scaleTargetRef"]["name"] == one("Deployment")["metadata"]["name"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    assert set(trigger["metadata"]) == {"serverAddress", "query", "threshold"}
    assert "serving_queue_depth" in trigger["metadata"]["query"]
    assert isinstance(trigger["metadata"]["threshold"], str)  # KEDA's metadata is strings


# The ServingRuntime and InferenceService fields used here, as KServe documents them
# (serving.kserve.io v1alpha1 ServingRuntimeSpec, v1beta1 PredictorSpec / ModelSpec).
SERVING_RUNTIME_FIELDS = {"supportedModelFormats", "protocolVersions", "containers",
                          "multiModel", "disabled", "grpcEndpoint", "grpcDataEndpoint",
                          "httpDataEndpoint", "replicas", "storageHelper", "builtInAdapter",
                          "volumes", "nodeSelector", "tolerations", "affinity", "labels",
                          "annotations", "imagePullSecrets"}
PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}
PREDICTOR_FIELDS = {"model", "minReplicas", "maxReplicas", "scaleMetric", "scaleTarget",
                    "containerConcurrency", "timeout", "terminationGracePeriodSeconds",
                    "serviceAccountName", "nodeSelector", "tolerations", "affinity"}
MODEL_FIELDS = {"modelFormat", "runtime", "storageUri", "protocolVersion", "resources", "env",
                "args", "ports", "readinessProbe", "livenessProbe"}


def test_serving_runtime_structure():
    runtime = one("ServingRuntime")
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    spec = runtime["spec"]
    assert set(spec) <= SERVING_RUNTIME_FIELDS
    assert set(spec["protocolVersions"]) <= PROTOCOLS
    assert all({"name"} <= set(f) <= {"name", "version", "autoSelect", "priority"}
               for f in spec["supportedModelFormats"])
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"  # the name KServe looks for
    validate(pod_with(container))  # every container field is a core Container field
    assert container["readinessProbe"]["httpGet"]["path"] == "/ping"
    assert container["livenessProbe"]["httpGet"]["path"] == "/live"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["SERVING_INFERENCE_ADDRESS"].endswith(":8080")
    assert container["ports"][0]["containerPort"] == 8080
    assert "--model-store=/mnt/models/model-store" in container["args"]


def test_inference_service_uses_the_runtime_with_protocol_v2():
    runtime = one("ServingRuntime")
    service = one("InferenceService")
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    predictor = service["spec"]["predictor"]
    assert set(predictor) <= PREDICTOR_FIELDS
    model = predictor["model"]
    assert set(model) <= MODEL_FIELDS
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in
                                            runtime["spec"]["supportedModelFormats"]}
    assert model["protocolVersion"] == "v2" and "v2" in runtime["spec"]["protocolVersions"]
    assert model["storageUri"].split("://")[0] in {"gs", "s3", "pvc", "https", "hf", "oci"}
    validate(pod_with({"name": "c", "image": "x", "resources": model["resources"]},
                      terminationGracePeriodSeconds=predictor["terminationGracePeriodSeconds"]))
