"""The Open Inference Protocol's JSON bodies (KServe V2 / Triton), as pydantic models.

Specification: kserve/open-inference-protocol, ``specification/protocol/inference_rest.md``.
The protocol lets clients add fields and parameters, so these models allow extras.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..schemas import Counts, ErrorItem

__all__ = [
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "InferInputTensor",
    "InferOutputTensor",
    "InferRequest",
    "InferRequestedOutput",
    "InferResponse",
    "ModelMetadata",
    "ServerMetadata",
    "TensorMetadata",
    "V2ErrorResponse",
]

# Every model's (protocol.MODELS): the vanilla cell's, then the gated cells' biases and the LSTM's cell state.
INPUT_NAMES = ("U", "V", "W", "x", "y", "s0", "lengths", "b", "b_hh", "c", "c0")
OUTPUT_NAMES = (
    "loss",
    "mean_loss",
    "tokens",
    "dLdU",
    "dLdV",
    "dLdW",
    "dLds0",
    "final_state",
    "losses",
    "dLdb",
    "dLdb_hh",
    "dLdc",
    "dLdc0",
    "final_cell",
)

_V2 = ConfigDict(extra="allow")  # the protocol lets clients add fields and parameters


class InferInputTensor(BaseModel):
    """One input tensor of a V2 inference request."""

    model_config = _V2

    # The spec lists the names; other names get this service's own message ("unknown input").
    name: str = Field(
        description="U, V, W, x, y, and optionally s0, lengths; the gated models' b, b_hh, c, and c0 (LSTM).",
        json_schema_extra={"enum": list(INPUT_NAMES)},
    )
    shape: Counts = Field(description="Dimensions of the tensor.")
    datatype: str = Field(
        description="FP64 or FP32 for U, V, W, s0; INT64 or INT32 for x, y, lengths.",
        json_schema_extra={"enum": ["FP64", "FP32", "INT64", "INT32"]},
    )
    parameters: dict[str, Any] | None = Field(
        default=None,
        description='{"binary_data_size": n}: the tensor is n raw bytes after the JSON header '
        "(binary tensor data extension) instead of `data`.",
    )
    data: list[Any] | None = Field(
        default=None, description="The elements in row-major order, flat or nested; omitted for binary inputs."
    )


class InferRequestedOutput(BaseModel):
    """An output the client asks for."""

    model_config = _V2

    name: str = Field(
        description="loss, mean_loss, tokens, dLdU, dLdV, dLdW, dLds0, final_state, losses; the gated models' "
        "dLdb, dLdb_hh, dLdc (for the biases given), and dLdc0, final_cell (LSTM).",
        json_schema_extra={"enum": list(OUTPUT_NAMES)},
    )
    parameters: dict[str, Any] | None = Field(
        default=None, description='{"binary_data": true}: return this output as raw bytes after the JSON header.'
    )


class InferRequest(BaseModel):
    """A V2 inference request (the JSON header, when binary tensor data follows)."""

    model_config = _V2

    id: str | None = Field(default=None, description="Echoed in the response.")
    parameters: dict[str, Any] | None = Field(
        default=None,
        description='"bptt_truncate": K (an integer >= 0; absent or null for full BPTT); '
        '"binary_data_output": true to return every output as raw bytes; "reset_after": true or false '
        "(model bptt-gru only: torch.nn.GRU's form, or the tutorial's, the default).",
    )
    inputs: list[InferInputTensor] = Field(min_length=1)
    outputs: list[InferRequestedOutput] | None = Field(
        default=None, description="Which outputs to return; all of them when omitted."
    )


class InferOutputTensor(BaseModel):
    """One output tensor of a V2 inference response."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = Field(
        default=None, description='{"binary_data_size": n} when the data follows the JSON header as raw bytes.'
    )
    data: list[Any] | None = Field(default=None, description="Row-major, flat; omitted for binary outputs.")


class InferResponse(BaseModel):
    """A V2 inference response (the JSON header, when binary outputs follow)."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[InferOutputTensor]


class TensorMetadata(BaseModel):
    """Name, datatype and shape of a model input or output (-1: any size)."""

    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    """``GET /v2/models/{model}``."""

    name: str
    versions: list[str]
    platform: str
    description: str | None = Field(
        default=None,
        description="What the model computes, and the datatypes and ranks each tensor also accepts (the "
        "protocol publishes one of each). Not in the protocol's schema: clients ignore it.",
    )
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(BaseModel):
    """``GET /v2``."""

    name: str
    version: str
    extensions: list[str]


class V2ErrorResponse(BaseModel):
    """The error body of the V2 routes: the protocol's ``error``, plus this service's usual fields."""

    error: str = Field(description="What was wrong, naming the tensor (the protocol's field).")
    detail: str = Field(description="The same sentence, as in every error body of this service.")
    errors: list[ErrorItem] = Field(default_factory=list)
    request_id: str | None = Field(default=None, description="The request's X-Request-Id.")
