"""service.settings: every bound at its value and one past it, the environment, the cross-checks,
the keys and origins read from their comma-separated settings, ``to_env`` and the README's table."""

from __future__ import annotations

import os

import pydantic
import pytest

from service.settings import ENV_PREFIX, Settings, _shown, settings_table


@pytest.fixture(autouse=True)
def _no_bptt_environment(monkeypatch):
    """Each test sees only the BPTT_* variables it sets."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def refusal(**values) -> dict:
    """The one error of ``Settings(**values)``."""
    with pytest.raises(pydantic.ValidationError) as info:
        Settings(**values)
    (error,) = info.value.errors(include_url=False)
    return error


# (setting, the last value admitted, the first refused, pydantic's word for the bound)
BOUNDS = [
    ("port", 0, -1, "greater_than_equal"),
    ("port", 65535, 65536, "less_than_equal"),
    ("workers", 1, 0, "greater_than_equal"),
    ("workers", 64, 65, "less_than_equal"),
    ("threads", 1, 0, "greater_than_equal"),
    ("threads", 256, 257, "less_than_equal"),
    ("blas_threads", 1, 0, "greater_than_equal"),
    ("blas_threads", 64, 65, "less_than_equal"),
    ("max_body_bytes", 1024, 1023, "greater_than_equal"),
    ("max_tokens", 1, 0, "greater_than_equal"),
    ("max_weights", 1, 0, "greater_than_equal"),
    ("max_probabilities", 1, 0, "greater_than_equal"),
    ("max_batch", 1, 0, "greater_than_equal"),
    ("max_batch_tokens", 1, 0, "greater_than_equal"),
    ("max_trace_values", 1, 0, "greater_than_equal"),
    ("max_trace_delta_o", 0, -1, "greater_than_equal"),
    ("max_queue", 0, -1, "greater_than_equal"),
    ("max_request_seconds", 1e-9, 0.0, "greater_than"),
    ("max_request_bytes", 1 << 20, (1 << 20) - 1, "greater_than_equal"),
    ("speed", 1e-9, 0.0, "greater_than"),
    ("request_timeout", 1e-9, 0.0, "greater_than"),
    ("request_timeout", 3600, 3600.001, "less_than_equal"),
    ("body_timeout", 1e-9, 0.0, "greater_than"),
    ("body_timeout", 60, 60.001, "less_than_equal"),
    ("max_parse_seconds", 1e-9, 0.0, "greater_than"),
]


@pytest.mark.parametrize(("name", "admitted", "refused", "kind"), BOUNDS)
def test_settings_bound_at_its_value_admitted_and_one_past_refused_naming_the_setting(name, admitted, refused, kind):
    assert getattr(Settings(**{name: admitted}), name) == admitted
    error = refusal(**{name: refused})
    assert error["loc"] == (name,) and error["type"] == kind
    assert error["input"] == refused


def test_settings_max_bytes_in_flight_at_max_body_bytes_and_one_below():
    assert Settings(max_body_bytes=1024, max_bytes_in_flight=1024).max_bytes_in_flight == 1024
    error = refusal(max_body_bytes=1025, max_bytes_in_flight=1024)
    assert error["msg"] == (
        "Value error, max_bytes_in_flight (1,024) must be at least max_body_bytes (1,025): "
        "a body the limit admits could never be held"
    )
    error = refusal(max_body_bytes=2 << 20, max_bytes_in_flight=(2 << 20) - 1)
    assert "max_bytes_in_flight (2,097,151) must be at least max_body_bytes (2,097,152)" in error["msg"]
    assert refusal(max_bytes_in_flight=1023)["loc"] == ("max_bytes_in_flight",)  # its own bound first


@pytest.mark.parametrize("key", [",", " , ,", " "])
def test_settings_api_key_of_only_commas_or_spaces_stops_the_start(key):
    error = refusal(api_key=key)
    assert error["msg"] == (
        "Value error, api_key is set but holds no key (only commas or spaces): the service would be open"
    )


def test_settings_api_keys_are_split_on_commas_and_stripped():
    assert Settings().api_keys == []
    assert Settings(api_key="k1").api_keys == ["k1"]
    assert Settings(api_key=" k1 , ,k2,").api_keys == ["k1", "k2"]
    assert Settings(api_key="a b").api_keys == ["a b"]  # only commas separate keys


def test_settings_cors_origins_are_split_on_commas_and_stripped():
    assert Settings().cors_allowed == []
    assert Settings(cors_origins=" , ").cors_allowed == []
    assert Settings(cors_origins="https://a.example, http://localhost:8888 ,").cors_allowed == [
        "https://a.example",
        "http://localhost:8888",
    ]


def test_settings_come_from_bptt_environment_variables(monkeypatch):
    monkeypatch.setenv("BPTT_PORT", "9000")
    monkeypatch.setenv("BPTT_TUNE_MALLOC", "false")
    monkeypatch.setenv("BPTT_MAX_REQUEST_SECONDS", "2.5")
    monkeypatch.setenv("BPTT_API_KEY", "s3cret")
    monkeypatch.setenv("PORT", "1")  # without the prefix: not a setting
    s = Settings()
    assert (s.port, s.tune_malloc, s.max_request_seconds, s.api_keys) == (9000, False, 2.5, ["s3cret"])
    assert Settings(port=7000).port == 7000  # an argument wins over the environment


@pytest.mark.parametrize(
    ("variable", "value", "loc"),
    [
        ("BPTT_PORT", "65536", ("port",)),
        ("BPTT_LOG_LEVEL", "loud", ("log_level",)),
        ("BPTT_WORKERS", "two", ("workers",)),
    ],
)
def test_settings_bad_environment_variable_names_the_setting(monkeypatch, variable, value, loc):
    monkeypatch.setenv(variable, value)
    assert refusal()["loc"] == loc


def test_settings_to_env_writes_every_setting_and_reads_back_equal(monkeypatch):
    s = Settings(
        port=9001,
        tune_malloc=False,
        speed=1.5,
        api_key="k1,k2",
        cors_origins="https://a.example",
        grpc_port=9002,
        rate_limit_per_key=2.5,
    )
    env = s.to_env()
    assert len(env) == len(Settings.model_fields)
    assert env["BPTT_GRPC_PORT"] == "9002"
    assert env["BPTT_RATE_LIMIT_PER_KEY"] == "2.5"
    assert env["BPTT_PORT"] == "9001"
    assert env["BPTT_TUNE_MALLOC"] == "False"
    assert env["BPTT_SPEED"] == "1.5"
    assert env["BPTT_API_KEY"] == "k1,k2"  # the secret itself, not pydantic's stars
    assert env["BPTT_MAX_BODY_BYTES"] == str(64 << 20)
    assert env["BPTT_LOG_LEVEL"] == "info"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings() == s


def test_settings_to_env_leaves_out_the_unset_settings():
    env = Settings().to_env()
    unset = {"BPTT_API_KEY", "BPTT_GRPC_PORT", "BPTT_RATE_LIMIT_PER_KEY"}  # the settings without a default
    assert not unset & set(env)
    assert len(env) == len(Settings.model_fields) - len(unset)
    assert all(name.startswith("BPTT_") and name.isupper() for name in env)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (None, "unset"),
        (True, "`true`"),
        (False, "`false`"),
        (0, "`0`"),
        (9_999, "`9999`"),
        (10_000, "10,000"),
        (1 << 20, "1 MiB"),
        (64 << 20, "64 MiB"),
        ((1 << 20) + 1, "1,048,577"),
        (999_999_999, "999,999,999"),
        (1_000_000_000, "1e+09"),
        (10_000.0, "10,000"),
        (12_345.5, "12345.5"),
        (0.5, "`0.5`"),
        ("text", "`text`"),
        ("", "``"),
    ],
)
def test_settings_shown_as_the_readme_writes_defaults(value, shown):
    assert _shown(value) == shown


def test_settings_table_has_one_row_per_setting_with_variable_option_default_and_meaning():
    lines = settings_table().split("\n")
    assert lines[:2] == ["| variable | option | default | meaning |", "|---|---|---|---|"]
    assert lines[-1] == ""  # ends with a newline
    rows = lines[2:-1]
    assert len(rows) == len(Settings.model_fields)
    assert rows[1] == "| `BPTT_PORT` | `--port` | `8000` | TCP port (0 picks a free one) |"
    assert (
        "| `BPTT_MAX_BODY_BYTES` | `--max-body-bytes` | 64 MiB | largest request body in bytes; over it, 413 "
        "before it is read |" in rows
    )
    assert any(row.startswith("| `BPTT_API_KEY` | `--api-key` | unset | API key(s)") for row in rows)
    assert rows[-1].startswith("| `BPTT_TRACING` | `--tracing` | `false` | ")
