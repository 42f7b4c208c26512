"""Request and response bodies, as pydantic models named by direction.

These models are the API reference: their descriptions become openapi/openapi.json.
Validation is strict: numbers must be JSON numbers (not strings or booleans),
finite; token ids must be JSON integers >= 0. Shapes that must agree with each
other (U, V, W, s0, x, y) are checked afterwards by ``engine.check_inputs``.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Number",
    "TokenId",
    "Matrix",
    "Vector",
    "BpttRequest",
    "BpttResponse",
    "ErrorItem",
    "ErrorResponse",
    "HealthResponse",
]

Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
TokenId = Annotated[int, Field(strict=True, ge=0)]
Matrix = list[list[Number]]
Vector = list[Number]

_REQUEST = ConfigDict(strict=True, extra="forbid")


class BpttRequest(BaseModel):
    """Weights of the RNN and one sequence: the input of ``POST /bptt``."""

    model_config = _REQUEST | ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "U": [[0.1, -0.2, 0.3], [0.0, 0.2, -0.1]],
                    "V": [[0.1, 0.2], [-0.3, 0.1], [0.2, 0.0]],
                    "W": [[0.5, -0.1], [0.2, 0.4]],
                    "x": [0, 2, 1],
                    "y": [2, 1, 0],
                    "bptt_truncate": None,
                }
            ]
        }
    )

    U: Matrix = Field(
        description="Input weights, H x C (rows of C numbers, H rows): column c is added "
        "to the pre-activation when token c is read."
    )
    V: Matrix = Field(description="Output weights, C x H: logits o_t = V s_t.")
    W: Matrix = Field(description="Recurrent weights, H x H: s_t = tanh(U[:, x_t] + W s_{t-1}).")
    x: list[TokenId] = Field(min_length=1, description="Input token ids, T of them, each in [0, C).")
    y: list[TokenId] = Field(
        min_length=1,
        description="Target token ids, T of them, each in [0, C): y[t] is the token that should follow x[t].",
    )
    bptt_truncate: Annotated[int, Field(strict=True, ge=0)] | None = Field(
        default=None,
        description="null (default): exact, full BPTT. An integer K >= 0: the seed's truncated "
        "BPTT, where the error of output t flows back through steps t, t-1, ..., max(0, t-K) only.",
    )
    s0: Vector | None = Field(
        default=None,
        description="Initial hidden state s_{-1}, H numbers; zeros when omitted.",
    )


class BpttResponse(BaseModel):
    """The loss and its gradients: the answer of ``POST /bptt``."""

    loss: float = Field(description="Summed cross-entropy, sum over t of -ln o_t[y_t] (natural log).")
    mean_loss: float = Field(description="loss / tokens: the loss per predicted token.")
    tokens: int = Field(description="T, the number of predicted tokens.")
    dLdU: Matrix = Field(description="dL/dU, H x C, the shape of U.")
    dLdV: Matrix = Field(description="dL/dV, C x H, the shape of V.")
    dLdW: Matrix = Field(description="dL/dW, H x H, the shape of W.")
    dLds0: Vector = Field(description="dL/ds0, H numbers: the gradient with respect to the initial state.")
    final_state: Vector = Field(
        description="s_{T-1}, the hidden state after the last input token, H numbers: "
        "pass it as s0 of the next chunk of a long text."
    )


class ErrorItem(BaseModel):
    """One problem with the request."""

    field: str = Field(description='Where the problem is, e.g. "W", "U[3][5]" or "x[7]"; "body" for the whole body.')
    message: str = Field(description="What was expected and what arrived.")
    type: str = Field(description='A machine-readable kind, e.g. "shape", "float_type", "missing".')


class ErrorResponse(BaseModel):
    """The body of every 4xx and 5xx answer."""

    detail: str = Field(description="A sentence for a person: the field, what was expected, what arrived.")
    errors: list[ErrorItem] = Field(
        default_factory=list, description="Each problem found (the first 20), for programs."
    )


class HealthResponse(BaseModel):
    """Liveness."""

    status: str = Field(description='"ok" while the process serves requests.')
