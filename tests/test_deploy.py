"""deploy/kubernetes/: valid against the Kubernetes schemas; deploy/kserve/: valid against the KServe SDK's
models; both consistent with the app."""

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
KSERVE = DEPLOY.parent / "kserve" / "inferenceservice.yaml"
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


# -- deploy/kserve: an InferenceService, validated by the KServe SDK's own models -------------------


def strict(data: object, kind: str, where: str = "") -> object:
    """``data`` as the SDK's model ``kind`` (``V1beta1InferenceService``, ``list[V1Container]``, ``str``...),
    refusing what the SDK would silently drop: a field the model does not have, a value of another type.
    Building each model runs the SDK's own checks (required fields, allowed values)."""
    import kserve.models
    import kubernetes.client.models

    if kind.lower().startswith("list["):  # the SDK writes list[...], the Kubernetes client List[...]
        assert isinstance(data, list), f"{where}: a list, got {data!r}"
        return [strict(item, kind[5:-1], f"{where}[{i}]") for i, item in enumerate(data)]
    if kind.lower().startswith(("dict(", "dict[")):  # dict(str, X) or Dict[str, X]
        assert isinstance(data, dict), f"{where}: a mapping, got {data!r}"
        value_kind = kind[5:-1].split(", ", 1)[1]
        return {k: strict(v, value_kind, f"{where}.{k}") for k, v in data.items()}
    natives = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}
    if kind in natives:
        assert isinstance(data, natives[kind]) and (kind != "int" or not isinstance(data, bool)), (
            f"{where}: {kind}, got {data!r}"
        )
        return data
    model = getattr(kserve.models, kind, None) or getattr(kubernetes.client.models, kind)
    assert isinstance(data, dict), f"{where}: a {kind} object, got {data!r}"
    attribute = {json_name: name for name, json_name in model.attribute_map.items()}
    unknown = set(data) - set(attribute)
    assert not unknown, f"{where}: {sorted(unknown)} are not fields of {kind}"
    values = {attribute[k]: strict(v, model.openapi_types[attribute[k]], f"{where}.{k}") for k, v in data.items()}
    return model(**values)


def test_strict_refuses_what_the_sdk_would_drop():
    good = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "spec": {"predictor": {}}}
    strict(good, "V1beta1InferenceService")
    with pytest.raises(AssertionError, match=r"\['replica'\] are not fields of V1beta1PredictorSpec"):
        strict(good | {"spec": {"predictor": {"replica": 2}}}, "V1beta1InferenceService")
    with pytest.raises(AssertionError, match="containerPort: int"):
        container = {"name": "c", "ports": [{"containerPort": "8080"}]}
        strict(good | {"spec": {"predictor": {"containers": [container]}}}, "V1beta1InferenceService")
    with pytest.raises(ValueError, match="name"):  # the SDK's own check: a container needs a name
        strict(good | {"spec": {"predictor": {"containers": [{"image": "i"}]}}}, "V1beta1InferenceService")


def inference_service() -> dict:
    (doc,) = yaml.safe_load_all(KSERVE.read_text())
    return doc


def test_inference_service_is_valid_for_the_kserve_sdk():
    doc = inference_service()
    assert (doc["apiVersion"], doc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    strict(doc, "V1beta1InferenceService")
    pod = doc["spec"]["predictor"]
    kubernetes_validate.validate(  # the predictor's pod parts, against the Kubernetes schemas too
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"}, "spec": {
            k: pod[k] for k in ("containers", "volumes")
        }},
        kubernetes_validate.latest_version(),
        strict=True,
    )  # fmt: skip


def kserve_settings() -> Settings:
    env = inference_service()["spec"]["predictor"]["containers"][0]["env"]
    fields = {f"BPTT_{name.upper()}" for name in Settings.model_fields}
    assert {e["name"] for e in env} <= fields
    return Settings(**{e["name"].removeprefix("BPTT_").lower(): e["value"] for e in env if "value" in e})


def test_inference_service_is_one_http_port_with_v2_probes_and_bounded():
    """Serverless (Knative) takes one port, named http1 for HTTP/1; the probes are the V2 health routes;
    the memory bound and the stop fit, as for the Deployment."""
    doc = inference_service()
    predictor = doc["spec"]["predictor"]
    (container,) = predictor["containers"]
    settings = kserve_settings()
    assert doc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    assert container["name"] == "kserve-container"
    (port,) = container["ports"]
    assert (port["name"], port["containerPort"]) == ("http1", settings.port)
    paths = set(create_app(Settings()).openapi()["paths"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready" in paths
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live" in paths
    assert container["readinessProbe"]["httpGet"]["port"] == container["livenessProbe"]["httpGet"]["port"] == 8080
    assert predictor["scaleTarget"] == settings.threads and predictor["scaleMetric"] == "concurrency"
    # Knative's timeout is the longest a request may take and the pod's termination grace.
    assert predictor["timeout"] >= settings.body_timeout + settings.request_timeout
    assert predictor["timeout"] >= stop_seconds(settings)
    limit = quantity(container["resources"]["limits"]["memory"])
    assert sum(admission.pod_memory(settings).values()) * 1.1 <= limit
    assert container["securityContext"]["runAsNonRoot"] and container["securityContext"]["readOnlyRootFilesystem"]
    key = next(e for e in container["env"] if e["name"] == "BPTT_API_KEY")
    assert key["valueFrom"]["secretKeyRef"]["name"] == load("Secret")["metadata"]["name"]
    # The Deployment's NetworkPolicy (port 8000 only, nothing out) must not select the predictor's pods.
    selector = load("NetworkPolicy")["spec"]["podSelector"]["matchLabels"]
    assert not selector.items() <= doc["metadata"].get("labels", {}).items()
