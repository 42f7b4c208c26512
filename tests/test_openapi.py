"""openapi/openapi.json is the app's spec, committed; regenerate it with `make openapi`."""

from __future__ import annotations

import json
from pathlib import Path

from service.app import create_app, openapi_json
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
