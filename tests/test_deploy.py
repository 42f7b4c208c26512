"""deploy/kubernetes/: valid against the Kubernetes schemas, and consistent with the app."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from service.app import create_app
from service.settings import Settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
MANIFESTS = sorted(DEPLOY.glob("*.yaml"))


def load(kind: str) -> dict:
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc["kind"] == kind:
                return doc
    raise AssertionError(f"no {kind} in {DEPLOY}")


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_manifest_is_valid_kubernetes(path):
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_deployment_probes_point_at_real_routes():
    container = load("Deployment")["spec"]["template"]["spec"]["containers"][0]
    paths = set(create_app(Settings()).openapi()["paths"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz" in paths
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz" in paths
    assert container["ports"][0]["containerPort"] == 8000


def test_deployment_is_locked_down_and_bounded():
    pod = load("Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"requests", "limits"} <= set(container["resources"])


def test_deployment_env_names_are_settings():
    fields = {f"BPTT_{name.upper()}" for name in Settings.model_fields}
    container = load("Deployment")["spec"]["template"]["spec"]["containers"][0]
    for env in container["env"]:
        assert env["name"] in fields, f"{env['name']} is not a setting"
        Settings(**{env["name"].removeprefix("BPTT_").lower(): env["value"]})  # and its value is valid


def test_service_and_hpa_target_the_deployment():
    deployment = load("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert load("Service")["spec"]["selector"].items() <= labels.items()
    target = load("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
