"""deploy/kubernetes/: valid against the Kubernetes schemas, and consistent with the app."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from service import admission
from service.__main__ import stop_seconds
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
        if "value" in env:
            Settings(**{env["name"].removeprefix("BPTT_").lower(): env["value"]})  # and its value is valid


def test_service_and_hpa_target_the_deployment():
    deployment = load("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert load("Service")["spec"]["selector"].items() <= labels.items()
    target = load("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def container_settings() -> Settings:
    """The Settings a pod of the Deployment runs with (its env, over the defaults)."""
    container = load("Deployment")["spec"]["template"]["spec"]["containers"][0]
    values = {e["name"].removeprefix("BPTT_").lower(): e["value"] for e in container["env"] if "value" in e}
    return Settings(**values)


def quantity(text: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(text.removesuffix(suffix)) * factor
    return int(text)


def test_worst_case_memory_of_a_pod_fits_its_limit():
    """Baseline + threads x the request budget + parsing + every body in flight, with 10% for the
    allocator, stays under the container's memory limit."""
    settings = container_settings()
    parts = admission.pod_memory(settings)
    limit = quantity(load("Deployment")["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"])
    worst = sum(parts.values()) * 1.1
    assert worst <= limit, f"worst case {worst / 2**20:.0f} MiB ({parts}) over the limit {limit / 2**20:.0f} MiB"


def test_probes_outlast_the_worst_stall_and_the_drain_fits_the_grace_period():
    settings = container_settings()
    pod = load("Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    stall = settings.max_parse_seconds  # the longest the event loop can be held (a JSON parse, GIL held)
    for probe in ("readinessProbe", "livenessProbe"):
        timeout = container[probe].get("timeoutSeconds", 1)
        assert timeout >= 2 * stall + 1, (probe, timeout)
    liveness = container["livenessProbe"]
    patience = liveness["periodSeconds"] * liveness["failureThreshold"]
    assert patience >= settings.request_timeout, "liveness must not kill a pod for one long request"

    # The drain (service/lifecycle.py): new work answered until a balancer that polls /readyz as the
    # kubelet does has seen it fail; then the admitted work and the stop fit the grace period,
    # after a preStop hook if there is one (it runs before SIGTERM, in the same period).
    readiness = container["readinessProbe"]
    assert settings.drain_grace_seconds >= readiness["periodSeconds"] * readiness["failureThreshold"]
    hook = container.get("lifecycle", {}).get("preStop", {})
    pre_stop = hook.get("sleep", {}).get("seconds", 0)
    assert set(hook) <= {"sleep"}, "a preStop hook other than sleep takes a time this test cannot check"
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + stop_seconds(settings)


def test_api_keys_come_from_the_secret_and_the_network_is_closed():
    container = load("Deployment")["spec"]["template"]["spec"]["containers"][0]
    key = next(e for e in container["env"] if e["name"] == "BPTT_API_KEY")
    ref = key["valueFrom"]["secretKeyRef"]
    secret = load("Secret")
    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    policy = load("NetworkPolicy")["spec"]
    labels = load("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["egress"] == [] and "Egress" in policy["policyTypes"]
    assert [p["port"] for rule in policy["ingress"] for p in rule["ports"]] == [8000]
