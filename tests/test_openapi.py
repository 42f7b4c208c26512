"""openapi/openapi.json is the app's spec, committed; regenerate it with `make openapi`."""

from __future__ import annotations

import json
from pathlib import Path

from service.app import create_app
from service.openapi import openapi_json
from service.settings import Settings

SPEC = Path(__file__).parent.parent / "openapi" / "openapi.json"


def test_openapi_committed_matches_app():
    committed = json.loads(SPEC.read_text())
    assert committed == create_app(Settings()).openapi(), "openapi/openapi.json drifted: run `make openapi`"
    assert SPEC.read_text() == openapi_json()


def test_openapi_describes_every_field_and_error():
    spec = create_app(Settings()).openapi()
    schemas = spec["components"]["schemas"]
    for name in ("BpttRequest", "BpttResponse"):
        for field, schema in schemas[name]["properties"].items():
            assert schema.get("description"), f"{name}.{field} has no description"
    responses = spec["paths"]["/bptt"]["post"]["responses"]
    assert {"200", "400", "415", "422", "500"} <= set(responses)
    body = spec["paths"]["/bptt"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/BpttRequest"}


def test_openapi_uses_json_schema_keywords_only():
    """Regression (found by schemathesis): a constraint written as pydantic's "ge" instead of
    JSON Schema's "minimum" let the fuzzer send bptt_truncate = -1291515 as valid data."""
    leaked = []

    def walk(node, where):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("ge", "gt", "le", "lt", "min_length", "max_length") and not where.endswith("properties"):
                    leaked.append(f"{where}.{key}")
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{where}[{i}]")

    walk(create_app(Settings()).openapi(), "spec")
    assert not leaked, leaked


def test_openapi_documents_binary_infer_answers():
    """Regression (found by schemathesis): binary V2 answers are application/octet-stream
    with Inference-Header-Content-Length, and the spec must say so."""
    spec = create_app(Settings()).openapi()
    for path in ("/v2/models/{model_name}/infer", "/v2/models/{model_name}/versions/{model_version}/infer"):
        ok = spec["paths"][path]["post"]["responses"]["200"]
        assert {"application/json", "application/octet-stream"} <= set(ok["content"])
        assert "Inference-Header-Content-Length" in ok["headers"]
        assert spec["paths"][path]["post"]["parameters"][0]["schema"]["enum"] == ["bptt", "bptt-gru", "bptt-lstm"]
