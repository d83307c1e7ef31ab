"""deploy/kubernetes: every manifest is valid against the Kubernetes JSON schemas (kubernetes-validate's
strict schemas: unknown fields are errors), the KEDA ScaledObject against the part of KEDA's CRD it
uses, and the pieces fit together (names referenced exist, Services find their pods and ports, the
scaler reads the queue the web writes to). No cluster runs here; the validators are real."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from cli.main import build_parser
from shared.config import PROJECT_ROOT, Settings, load_settings

DEPLOY = PROJECT_ROOT / "deploy" / "kubernetes"
# The oldest Kubernetes release still commonly run, and the newest the package has schemas for.
VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())
# Objects the operator creates by hand (kustomization.yaml says how): the Secret (its example is here)
# and the nginx front's ConfigMap, made from deploy/nginx/xray.conf.template.
EXTERNAL_CONFIGMAPS = {"xray-nginx"}
EXAMPLES = {"secret.example.yaml"}

# KEDA's ScaledObject (keda.sh/v1alpha1), the fields of its CRD these manifests may use; KEDA reads
# trigger metadata as a map of strings. The redis scaler's keys: KEDA's documentation of that scaler.
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"],
                     "properties": {"name": {"type": "string"}, "labels": _STRING_MAP,
                                    "annotations": _STRING_MAP, "namespace": {"type": "string"}}},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {"type": "object", "required": ["name"], "additionalProperties": False,
                                   "properties": {"name": {"type": "string"}, "kind": {"type": "string"},
                                                  "apiVersion": {"type": "string"},
                                                  "envSourceContainerName": {"type": "string"}}},
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {"type": "object"},
                "advanced": {"type": "object"},
                "triggers": {"type": "array", "minItems": 1, "items": {
                    "type": "object",
                    "required": ["type", "metadata"],
                    "additionalProperties": False,
                    "properties": {
                        "type": {"type": "string"},
                        "name": {"type": "string"},
                        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                        "useCachedMetrics": {"type": "boolean"},
                        "authenticationRef": {"type": "object", "required": ["name"]},
                        "metadata": _STRING_MAP,
                    },
                }},
            },
        },
    },
}
REDIS_SCALER_KEYS = {
    "address", "addressFromEnv", "host", "hostFromEnv", "port", "portFromEnv", "username", "usernameFromEnv",
    "passwordFromEnv", "databaseIndex", "listName", "listLength", "activationListLength", "enableTLS", "unsafeSsl",
}


def load_documents(folder: Path = DEPLOY) -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(folder.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return docs


def validate(doc: dict[str, Any], version: str = VERSIONS[-1]) -> None:
    """Raises when `doc` is not a valid object of its kind."""
    if doc.get("apiVersion", "").startswith("keda.sh/"):
        jsonschema.Draft202012Validator(SCALED_OBJECT_SCHEMA).validate(doc)
        for trigger in doc["spec"]["triggers"]:
            if trigger["type"] == "redis":
                unknown = set(trigger["metadata"]) - REDIS_SCALER_KEYS
                if unknown:
                    raise jsonschema.ValidationError(f"unknown redis scaler metadata {sorted(unknown)}")
                if "listName" not in trigger["metadata"]:
                    raise jsonschema.ValidationError("the redis scaler needs listName")
        return
    kubernetes_validate.validate(doc, version, strict=True)


def by_kind(docs: list[tuple[str, dict[str, Any]]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in docs if doc["kind"] == kind}


def pod_specs(docs: list[tuple[str, dict[str, Any]]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for _, doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def docs() -> list[tuple[str, dict[str, Any]]]:
    return load_documents()


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid(docs: list[tuple[str, dict[str, Any]]], version: str) -> None:
    kinds, errors = set(), []
    for name, doc in docs:
        try:
            validate(doc, version)
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as exc:
            errors.append(f"{name}: {doc['kind']} {doc['metadata']['name']}: {exc.message}")
        kinds.add(doc["kind"])
    assert errors == []
    assert {"Deployment", "Service", "Job", "ConfigMap", "Secret", "ScaledObject", "NetworkPolicy"} <= kinds


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    files = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"} - EXAMPLES
    assert set(kustomization["resources"]) == files
    assert {image["name"] for image in kustomization["images"]} == {"diagnose-my-xray"}


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["spec"].update(replica=3), "replica"),  # a misspelt field
    (lambda d: d["spec"]["template"]["spec"]["containers"][0]["ports"][0].update(containerPort="eight"), "eight"),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("name"), "name"),
    (lambda d: d["spec"].pop("selector"), "selector"),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"].pop("port"), "port"),
])
def test_a_broken_manifest_is_refused(docs: list[tuple[str, dict[str, Any]]], mutate: Any, message: str) -> None:
    web = copy.deepcopy(by_kind(docs, "Deployment")["xray-web"])
    validate(web)
    mutate(web)
    with pytest.raises(kubernetes_validate.ValidationError, match=message):
        validate(web)


@pytest.mark.parametrize("mutate", [
    lambda d: d["spec"]["triggers"][0]["metadata"].pop("listName"),
    lambda d: d["spec"]["triggers"][0]["metadata"].update(listname="xray.diagnose"),  # a misspelt key
    lambda d: d["spec"]["triggers"][0]["metadata"].update(listLength=100),  # KEDA wants strings
    lambda d: d["spec"].update(maxReplicas=4),
    lambda d: d["spec"].pop("scaleTargetRef"),
])
def test_a_broken_scaled_object_is_refused(docs: list[tuple[str, dict[str, Any]]], mutate: Any) -> None:
    scaled = copy.deepcopy(by_kind(docs, "ScaledObject")["xray-worker"])
    validate(scaled)
    mutate(scaled)
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled)


def test_references_resolve(docs: list[tuple[str, dict[str, Any]]]) -> None:
    configmaps = set(by_kind(docs, "ConfigMap")) | EXTERNAL_CONFIGMAPS
    secrets = set(by_kind(docs, "Secret"))
    assert secrets == {"xray-secrets"}
    for name, spec in pod_specs(docs):
        for container in spec.get("initContainers", []) + spec["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in configmaps, name
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets, name
            volumes = {v["name"] for v in spec.get("volumes", [])}
            assert {m["name"] for m in container.get("volumeMounts", [])} <= volumes, name
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps, name
    # Services select pods that have the named port.
    deployments = by_kind(docs, "Deployment")
    for service in by_kind(docs, "Service").values():
        matches = [d for d in deployments.values()
                   if service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matches) == 1, service["metadata"]["name"]
        ports = {p["name"] for c in matches[0]["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports, service["metadata"]["name"]


def test_the_settings_and_commands_are_the_service_s(docs: list[tuple[str, dict[str, Any]]]) -> None:
    config = by_kind(docs, "ConfigMap")["xray-config"]["data"]
    secret = by_kind(docs, "Secret")["xray-secrets"]["stringData"]
    settings = load_settings({**config, **secret})  # every value parses (the metrics ranges, the port ...)
    assert settings.production and settings.worker_metrics_port == int(config["XRAY_WORKER_METRICS_PORT"])
    # The scaler watches the list the web sends studies to, and finds Redis in the worker's environment.
    scaled = by_kind(docs, "ScaledObject")["xray-worker"]
    metadata = scaled["spec"]["triggers"][0]["metadata"]
    assert scaled["spec"]["triggers"][0]["type"] == "redis"
    assert metadata["listName"] == settings.queue_name == Settings().queue_name
    assert scaled["spec"]["scaleTargetRef"]["name"] in by_kind(docs, "Deployment")
    assert {metadata["addressFromEnv"], metadata["passwordFromEnv"]} <= set(config) | set(secret)
    # Commands parse with this checkout's CLI.
    parser = build_parser()
    for _name, spec in pod_specs(docs):
        for container in spec["containers"]:
            command = container.get("command", [])
            if command[:1] == ["xray"]:
                assert callable(parser.parse_args(command[1:]).func), command
    web = by_kind(docs, "Deployment")["xray-web"]["spec"]["template"]["spec"]
    container = web["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert "python:web.gunicorn_conf" in container["command"]
    assert "web.wsgi:app" in container["command"]
    metrics_dir = {e["name"]: e["value"] for e in container["env"]}["PROMETHEUS_MULTIPROC_DIR"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "emptyDir" in {v["name"]: v for v in web["volumes"]}[mounts[metrics_dir]]
    worker = by_kind(docs, "Deployment")["xray-worker"]["spec"]["template"]["spec"]["containers"][0]
    assert {p["containerPort"] for p in worker["ports"]} == {settings.worker_metrics_port}
