"""Request and response bodies, as pydantic models named by direction.

These models are the API reference: their descriptions become openapi/openapi.json.
Validation is strict: numbers must be JSON numbers (not strings or booleans),
finite; token ids must be JSON integers >= 0. Shapes that must agree with each
other (U, V, W, s0, x, y) are checked afterwards by ``engine.check_inputs``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag

from .checks import MistakeName
from .gated_checks import GatedMistakeName

__all__ = [
    "TENSOR_TAGS",
    "AdmittedExample",
    "BpttBatchRequest",
    "BpttBatchResponse",
    "BpttRequest",
    "BpttResponse",
    "CompareRequest",
    "CompareResponse",
    "CostEstimate",
    "CostResponse",
    "Count",
    "Counts",
    "ErrorItem",
    "ErrorResponse",
    "FlowRequest",
    "FlowResponse",
    "GradientCheckRequest",
    "GradientCheckResponse",
    "HealthResponse",
    "IndexResponse",
    "LagSummary",
    "LimitInForce",
    "LimitsResponse",
    "MatrixIn",
    "Number",
    "SequenceIn",
    "Tensor",
    "TokenId",
    "TokenIds",
    "TraceOut",
    "VectorIn",
    "VjpCompareRequest",
    "VjpCompareResponse",
    "VjpRequest",
    "VjpResponse",
]


def _integral_float_to_int(value: Any) -> Any:
    """3.0 -> 3, as JSON Schema counts it an integer; 1.5, "3" and true stay, to be refused."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


def _integral_floats_to_ints(value: Any) -> Any:
    """``_integral_float_to_int`` over a list, in one call: a call per item cost more than validating the list."""
    if type(value) is list and not all(type(v) is int for v in value):
        return [_integral_float_to_int(v) for v in value]
    return value


Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Count = Annotated[int, Field(strict=True, ge=0), BeforeValidator(_integral_float_to_int)]
TokenId = Count
# A list of counts (token ids, a shape), the floats that are whole numbers read as integers once per list.
Counts = Annotated[list[Annotated[int, Field(strict=True, ge=0)]], BeforeValidator(_integral_floats_to_ints)]
TokenIds = Counts

_REQUEST = ConfigDict(strict=True, extra="forbid")


class Tensor(BaseModel):
    """An array as base64 of its raw bytes: little-endian, row-major (C order).

    The idea of the KServe / Triton binary tensor extension, kept inside JSON:
    8 bytes a number instead of about 20 characters, and no float parsing.
    """

    model_config = _REQUEST

    dtype: Literal["float32", "float64"] = Field(description="Element type of the bytes.")
    shape: Counts = Field(description="Dimensions, e.g. [H, C] for U; the bytes hold product(shape) elements.")
    data: str | None = Field(
        default=None,
        description="Standard base64 (RFC 4648, with padding) of the little-endian, row-major bytes. Required, "
        "but by the `/cost` dry runs, which price a request from its shapes: there `{dtype, shape}` alone will do.",
    )


def _matrix_or_tensor(value: Any) -> str:
    return "tensor" if isinstance(value, (dict, Tensor)) else "lists"


# Tags of the two forms of an array field; they appear in pydantic's error
# locations (("U", "lists", 3, 5)) and are dropped from the field names we report.
TENSOR_TAGS = ("lists", "tensor", "rank1", "rank2", "rank3", "step", "steps")

# Nested lists with at least one row of at least one number: what JSON Schema can say
# of a matrix (rows of equal length, and shapes that agree, are checked after parsing).
Row = Annotated[list[Number], Field(min_length=1)]
MatrixIn = Annotated[
    Annotated[list[Row], Field(min_length=1), Tag("lists")] | Annotated[Tensor, Tag("tensor")],
    Discriminator(_matrix_or_tensor),
]
VectorIn = Annotated[
    Annotated[list[Number], Field(min_length=1), Tag("lists")] | Annotated[Tensor, Tag("tensor")],
    Discriminator(_matrix_or_tensor),
]


def _weight_form(value: Any) -> str:
    """'tensor', 'rank3' (nested three deep: a gated cell's stacked gates) or 'lists'."""
    if isinstance(value, dict | Tensor):
        return "tensor"
    if isinstance(value, list) and value and isinstance(value[0], list) and value[0] and isinstance(value[0][0], list):
        return "rank3"
    return "lists"


def _bias_form(value: Any) -> str:
    """'tensor', 'rank2' (a gated cell's G x H biases) or 'lists'."""
    if isinstance(value, dict | Tensor):
        return "tensor"
    return "rank2" if isinstance(value, list) and value and isinstance(value[0], list) else "lists"


# U and W: H x C and H x H for the vanilla cell, G x H x C and G x H x H for a gated one.
WeightIn = Annotated[
    Annotated[list[Row], Field(min_length=1), Tag("lists")]
    | Annotated[list[Annotated[list[Row], Field(min_length=1)]], Field(min_length=1), Tag("rank3")]
    | Annotated[Tensor, Tag("tensor")],
    Discriminator(_weight_form),
]
# b and b_hh: H numbers for the vanilla cell, G x H for a gated one.
BiasIn = Annotated[
    Annotated[list[Number], Field(min_length=1), Tag("lists")]
    | Annotated[list[Row], Field(min_length=1), Tag("rank2")]
    | Annotated[Tensor, Tag("tensor")],
    Discriminator(_bias_form),
]
MatrixOut = list[list[float]] | Tensor
VectorOut = list[float] | Tensor
ArrayOut = list[Any] | Tensor


_U = Field(
    description="Input weights, H x C (H rows of C numbers, or a tensor of shape [H, C]): "
    "column c is added to the pre-activation when token c is read. Gated cells: G x H x C, "
    "the gates stacked in PyTorch's order (GRU r, z, n: G = 3; LSTM i, f, g, o: G = 4), "
    "so an nn.GRU's or nn.LSTM's weight_ih_l0.reshape(G, H, C) passes as it is."
)
_V = Field(description="Output weights, C x H: logits o_t = V s_t.")
_W = Field(
    description="Recurrent weights, H x H: s_t = tanh(U[:, x_t] + W s_{t-1}). Gated cells: G x H x H "
    "(weight_hh_l0.reshape(G, H, H))."
)
_CELL: Any = Field(
    default="rnn",
    description='The recurrent cell: "rnn" (default, the tutorial\'s s_t = tanh(U[:, x_t] + W s_{t-1})), '
    '"gru" or "lstm" (docs/derivation.md, section 10). The gated cells take U, W, b and b_hh stacked by gate.',
)
_RESET_AFTER = Field(
    default=False,
    description="GRU only. false (default): the tutorial's GRU, the reset gate applied to the state before "
    "the product, n_t = tanh(U_n[:, x_t] + W_n (r_t * s_{t-1}) + b_n + b_hh_n). true: the cuDNN / "
    "torch.nn.GRU form, n_t = tanh(U_n[:, x_t] + b_n + r_t * (W_n s_{t-1} + b_hh_n)) (Keras' reset_after).",
)
_B_HH = Field(
    default=None,
    description="Gated cells: the hidden-side gate biases, G x H (PyTorch's bias_hh_l0.reshape(G, H)); they add "
    "to b, except inside the GRU's reset_after product. Given, the answer has dLdb_hh.",
)
_C0 = Field(default=None, description="LSTM only: the initial cell state c_{-1}, H numbers; zeros when omitted.")
_TRUNCATE = Field(
    default=None,
    description="null (default): exact, full BPTT. An integer K >= 0: the seed's truncated "
    "BPTT, where the error of output t flows back through steps t, t-1, ..., max(0, t-K) only.",
)
_B = Field(
    default=None,
    description="Optional hidden bias, H numbers: s_t = tanh(U[:, x_t] + W s_{t-1} + b). Given, the answer has dLdb. "
    "Gated cells: the input-side gate biases, G x H (PyTorch's bias_ih_l0.reshape(G, H)).",
)
_C = Field(
    default=None,
    description="Optional output bias, C numbers: o_t = softmax(V s_t + c). Given, the answer has dLdc.",
)
Positive = Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)]


class _WeightsIn(BaseModel):
    """The fields every gradient request has: the weights and how to compute."""

    model_config = _REQUEST

    cell: Literal["rnn", "gru", "lstm"] = _CELL
    U: WeightIn = _U
    V: MatrixIn = _V
    W: WeightIn = _W
    bptt_truncate: Count | None = _TRUNCATE
    reset_after: bool = _RESET_AFTER
    encoding: Literal["json", "base64"] = Field(
        default="json",
        description='How the arrays of the answer are written: "json" as nested lists of numbers, '
        '"base64" as tensor objects {dtype, shape, data} (about 3x smaller and much faster).',
    )
    dtype: Literal["float64", "float32"] = Field(
        default="float64",
        description="Precision of the computation and of the returned arrays. Inputs are "
        "converted to it; a value beyond float32's range is refused, not rounded to infinity.",
    )
    b: BiasIn | None = _B
    b_hh: BiasIn | None = _B_HH
    c: VectorIn | None = _C
    clip: Positive | None = Field(
        default=None,
        description="Optional: clip every entry of dLdU, dLdV, dLdW (and dLdb, dLdc) to [-clip, clip]; "
        "the answer's `clipped` counts the entries clipped.",
    )


_X = Field(min_length=1, description="Input token ids, T of them, each in [0, C).")
_Y = Field(
    min_length=1,
    description="Target token ids, T of them, each in [0, C): y[t] is the token that should follow x[t].",
)
_S0 = Field(default=None, description="Initial hidden state s_{-1}, H numbers; zeros when omitted.")


class BpttRequest(_WeightsIn):
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

    x: TokenIds = _X
    y: TokenIds = _Y
    s0: VectorIn | None = _S0
    c0: VectorIn | None = _C0
    trace: bool = Field(
        default=False,
        description="Also return the seed's deltas (`trace` in the answer): delta_o, each output's "
        "delta_t at every step it reaches back to, and the per-lag norms. For small problems: "
        "limited by BPTT_MAX_TRACE_VALUES.",
    )


class _GradientsOut(BaseModel):
    loss: float = Field(description="Summed cross-entropy, sum over t of -ln o_t[y_t] (natural log).")
    mean_loss: float = Field(description="loss / tokens: the loss per predicted token.")
    tokens: int = Field(description="The number of predicted tokens (T, or the sum of the T's of a batch).")
    dLdU: ArrayOut = Field(description="dL/dU, the shape of U: H x C (gated cells: G x H x C).")
    dLdV: MatrixOut = Field(description="dL/dV, C x H, the shape of V.")
    dLdW: ArrayOut = Field(description="dL/dW, the shape of W: H x H (gated cells: G x H x H).")
    dLdb: ArrayOut | None = Field(
        default=None, description="dL/db, the shape of b (H; gated cells: G x H), when b was given; else null."
    )
    dLdb_hh: ArrayOut | None = Field(
        default=None, description="Gated cells: dL/db_hh, G x H, when b_hh was given; absent or null otherwise."
    )
    dLdc: VectorOut | None = Field(default=None, description="dL/dc, C numbers, when c was given; else null.")
    clipped: dict[str, int] | None = Field(
        default=None,
        description="With `clip`: for each gradient, how many entries were clipped (0: none). Else null.",
    )


class LagSummary(BaseModel):
    """The error passed back j steps, over all outputs that reach that far."""

    lag: int = Field(description="j: how many steps back from its output.")
    outputs: int = Field(description="How many outputs reach back j steps.")
    mean_norm: float = Field(description="Mean of ||dE_t/dz_{t-j}|| over those outputs.")
    max_norm: float = Field(description="Largest ||dE_t/dz_{t-j}||.")


class TraceOut(BaseModel):
    """What BPTT passes back, step by step (docs/derivation.md, sections 4 and 10).

    Every cell: dL/ds_k and the per-lag norms ||dE_t/ds_{t-j}||, so the three cells compare on the
    same quantity. The vanilla cell also has the seed's delta_o and delta_t; the LSTM has dL/dc_k.
    """

    delta_o: MatrixOut | None = Field(
        default=None,
        description="Vanilla cell: T x C, o_t - onehot(y_t), the seed's delta_o; null when T x C is over "
        "BPTT_MAX_TRACE_DELTA_O, and for the gated cells.",
    )
    deltas: list[MatrixOut] | None = Field(
        default=None,
        description="Vanilla cell: one matrix per output t, row j = dE_t/dz_{t-j} (the seed's delta_t at step "
        "t - j), for j = 0 .. min(t, bptt_truncate). Absent for the gated cells.",
    )
    delta_norms: list[list[float]] | None = Field(
        default=None, description="Vanilla cell: ||row j of deltas[t]||, per output t."
    )
    lag_summary: list[LagSummary] | None = Field(
        default=None,
        description="Vanilla cell: per lag, mean and largest delta norm, the vanishing (or exploding) gradient curve.",
    )
    dLds: MatrixOut = Field(
        description="T x H: dL/ds_k, the gradient of the loss with respect to the hidden state after step k, "
        "as BPTT passes it back (truncated for the vanilla cell with bptt_truncate; the gated cells' trace is "
        "always of full BPTT)."
    )
    dLdc: MatrixOut | None = Field(default=None, description="LSTM: T x H, dL/dc_k, with respect to the cell state.")
    state_norms: list[list[float]] = Field(
        description="Per output t: ||dE_t/ds_{t-j}|| for each lag j it reaches back (E_t the loss of output t)."
    )
    state_lag_summary: list[LagSummary] = Field(
        description="Per lag: mean and largest ||dE_t/ds_{t-j}||, the same curve for every cell."
    )


class BpttResponse(_GradientsOut):
    """The loss and its gradients: the answer of ``POST /bptt``."""

    dLds0: VectorOut = Field(description="dL/ds0, H numbers: the gradient with respect to the initial state.")
    final_state: VectorOut = Field(
        description="s_{T-1}, the hidden state after the last input token, H numbers: "
        "pass it as s0 of the next chunk of a long text."
    )
    dLdc0: VectorOut | None = Field(
        default=None, description="LSTM: dL/dc0, H numbers, the gradient with respect to the initial cell state."
    )
    final_cell: VectorOut | None = Field(
        default=None, description="LSTM: c_{T-1}, the cell state after the last token: pass it as c0 of the next chunk."
    )
    trace: TraceOut | None = Field(default=None, description="The deltas, when the request asked for `trace`.")


class SequenceIn(BaseModel):
    """One sequence of a batch."""

    model_config = _REQUEST

    x: TokenIds = _X
    y: TokenIds = _Y
    s0: VectorIn | None = _S0
    c0: VectorIn | None = _C0


class BpttBatchRequest(_WeightsIn):
    """Weights once, and several sequences: the input of ``POST /bptt/batch``."""

    sequences: list[SequenceIn] = Field(min_length=1, description="B sequences; their lengths may differ.")


class BpttBatchResponse(_GradientsOut):
    """Summed loss and gradients of a batch: the answer of ``POST /bptt/batch``.

    The gradients are of ``loss``, the sum over the sequences: the sum of what
    ``POST /bptt`` returns for each.
    """

    losses: list[float] = Field(description="Each sequence's summed loss, in request order (B numbers).")
    dLds0: MatrixOut = Field(description="B x H: each sequence's gradient with respect to its s0.")
    final_state: MatrixOut = Field(description="B x H: each sequence's last hidden state.")
    dLdc0: MatrixOut | None = Field(default=None, description="LSTM: B x H, each sequence's dL/dc0.")
    final_cell: MatrixOut | None = Field(default=None, description="LSTM: B x H, each sequence's last cell state.")


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
    request_id: str | None = Field(
        default=None, description="The request's X-Request-Id (the client's, or one the service made): quote it."
    )


class HealthResponse(BaseModel):
    """Liveness and readiness."""

    status: str = Field(description='"ok" (liveness) or "ready" (readiness).')
    version: str = Field(description="The service's version.")


class IndexResponse(BaseModel):
    """``GET /``: where to go next."""

    service: str
    version: str
    docs: str = Field(description="The interactive API reference.")
    explain: str = Field(description="The page that draws delta_t, for learners.")
    openapi: str = Field(description="The OpenAPI spec.")


# -- checking gradients ---------------------------------------------------------


def _step_or_steps(value: Any) -> str:
    return "steps" if isinstance(value, dict) else "step"


_OneStep = Annotated[Positive, Field(le=1.0)]
Step = Annotated[
    Annotated[_OneStep, Tag("step")] | Annotated[dict[Literal["U", "V", "W", "b", "c", "s0"], _OneStep], Tag("steps")],
    Discriminator(_step_or_steps),
]


class GradientCheckRequest(BaseModel):
    """The engine's gradients against central differences: the input of ``POST /gradient-check``."""

    model_config = _REQUEST

    cell: Literal["rnn", "gru", "lstm"] = _CELL
    U: WeightIn = _U
    V: MatrixIn = _V
    W: WeightIn = _W
    reset_after: bool = _RESET_AFTER
    b: BiasIn | None = _B
    b_hh: BiasIn | None = _B_HH
    c: VectorIn | None = _C
    x: TokenIds = _X
    y: TokenIds = _Y
    s0: VectorIn | None = _S0
    c0: VectorIn | None = _C0
    bptt_truncate: Count | None = Field(
        default=None,
        description="null (default) checks the exact gradient. With K, the truncated gradients are "
        "checked against the derivatives of the loss, and differ: see how much.",
    )
    h: Step = Field(
        default=1e-5,
        description="Step of the central differences (f(p+h) - f(p-h)) / 2h, at most 1; or a step per parameter, "
        '{"U": 1e-5, "W": 1e-6} (1e-5 for the others).',
    )
    tolerance: Positive = Field(default=1e-6, description="Largest relative error that passes.")
    samples: Annotated[int, Field(strict=True, ge=1, le=1000), BeforeValidator(_integral_float_to_int)] = Field(
        default=50,
        description="Entries checked per parameter (all of a smaller one): half of them those with the largest "
        "gradients, the rest drawn at random.",
    )
    seed: Annotated[int, Field(strict=True, ge=0, le=2**32 - 1), BeforeValidator(_integral_float_to_int)] = Field(
        default=0, description="Seed of the random draw of entries (reported in the answer: the check repeats exactly)."
    )


class CheckedEntry(BaseModel):
    """The entry with the largest relative error."""

    index: list[int] = Field(description="Its index in the parameter.")
    analytic: float = Field(description="The engine's gradient (BPTT).")
    numeric: float | None = Field(description="The central difference; null if it is not finite.")


class ParameterCheck(BaseModel):
    """The check of one parameter."""

    checked: int = Field(description="Entries checked.")
    entries: int = Field(description="Entries of the parameter.")
    h: float = Field(description="The step used for this parameter.")
    max_relative_error: float | None = Field(
        description="Largest |a - n| / max(|a|, |n|, 1e-8): 0 when equal, never NaN (unlike "
        "|a - n| / (|a| + |n|) at 0/0); null (and failed) when a central difference is not finite."
    )
    max_absolute_error: float | None = Field(description="Largest |a - n|; null when not finite.")
    passed: bool = Field(description="max_relative_error <= tolerance.")
    worst: CheckedEntry


class GradientCheckResponse(BaseModel):
    """The answer of ``POST /gradient-check``."""

    passed: bool = Field(description="Every parameter passed.")
    h: float | dict[str, float] = Field(description="The step(s) asked for.")
    tolerance: float = Field(
        description="Largest relative error that passes, |a - n| / max(|a|, |n|, 1e-8). The tutorial's "
        "gradient_check uses |a - n| / (|a| + |n|) with a threshold of 0.01: the same scale within a factor "
        "of 2, and 1e-6 is 10,000 times stricter (central differences reach about 1e-9 here)."
    )
    seed: int = Field(description="The seed of the entries drawn: the same request checks the same entries.")
    parameters: dict[str, ParameterCheck] = Field(description="U, V, W, and b, c, s0 when given.")
    note: str | None = Field(default=None, description="What to expect, when bptt_truncate was given.")


class CompareRequest(BaseModel):
    """A learner's own gradients and the inputs they came from: the input of ``POST /bptt/compare``."""

    model_config = _REQUEST

    cell: Literal["rnn", "gru", "lstm"] = _CELL
    U: WeightIn = _U
    V: MatrixIn = _V
    W: WeightIn = _W
    reset_after: bool = _RESET_AFTER
    b: BiasIn | None = _B
    b_hh: BiasIn | None = _B_HH
    c: VectorIn | None = _C
    x: TokenIds = _X
    y: TokenIds = _Y
    s0: VectorIn | None = _S0
    c0: VectorIn | None = _C0
    bptt_truncate: Count | None = _TRUNCATE
    dLdU: WeightIn = Field(description="Your dL/dU, the shape of U (H x C; G x H x C for a gated cell).")
    dLdV: MatrixIn = Field(description="Your dL/dV, C x H.")
    dLdW: WeightIn = Field(description="Your dL/dW, the shape of W (H x H; G x H x H for a gated cell).")
    tolerance: Positive = Field(
        default=1e-6, description="Largest error that passes, relative to the largest entry of the expected gradient."
    )


class WorstEntry(BaseModel):
    """One of the entries furthest from the expected gradient."""

    index: list[int]
    submitted: float
    expected: float
    abs_error: float


class ParameterComparison(BaseModel):
    """Your gradient of one parameter against the engine's."""

    max_absolute_error: float
    max_relative_error: float = Field(description="max |yours - expected| / max |expected|.")
    passed: bool
    worst: list[WorstEntry] = Field(description="The five entries furthest off.")


class Diagnosis(BaseModel):
    """A classic mistake your gradients match."""

    mistake: MistakeName | GatedMistakeName = Field(
        description="The mistake's name: one spelling, service.checks.MistakeName for the vanilla cell and "
        "service.gated_checks.GatedMistakeName for the gated ones (whose reset_after_convention and "
        "update_gate_swapped are conventions, not mistakes)."
    )
    explanation: str = Field(description="What the mistake is and how to fix it.")


class TokenColumn(BaseModel):
    """One column of dL/dU: the steps that read this token."""

    token: int
    max_absolute_error: float


class Disagreement(BaseModel):
    """Where a submission that no classic mistake explains is furthest off."""

    parameters: list[str] = Field(description="dLdU, dLdV, dLdW from the largest relative error to the smallest.")
    dLdU_columns: list[TokenColumn] = Field(
        description="The token columns of dL/dU furthest off (a summed gradient's only view of the time steps: "
        "column c collects every step that read token c)."
    )


class CompareResponse(BaseModel):
    """The answer of ``POST /bptt/compare``."""

    passed: bool
    tolerance: float
    parameters: dict[str, ParameterComparison] = Field(description="dLdU, dLdV, dLdW.")
    diagnosis: list[Diagnosis] = Field(
        description="Every classic mistake your gradients match (empty when they pass, or when none fits; several "
        "when several fit, e.g. with a symmetric W or T = 1)."
    )
    disagreement: Disagreement | None = Field(
        default=None, description="When they fail and no mistake fits: which parameters and token columns are off."
    )


# -- the cost model ----------------------------------------------------------------


class CostEstimate(BaseModel):
    """The cost model's prediction for one request, from its shapes."""

    seconds: float = Field(description="Predicted compute time on this server (scaled by BPTT_SPEED).")
    bytes: int = Field(description="Predicted peak memory: compute_bytes + input_bytes.")
    compute_bytes: int = Field(description="Peak bytes of the arrays the computation makes.")
    input_bytes: int = Field(
        description="Bytes of the request's own arrays, and of its answer as it is written where that is large."
    )
    terms: dict[str, float] = Field(description="Seconds by part (recurrence, output layer, ...), summing to seconds.")


class CostResponse(BaseModel):
    """The answer of ``POST /bptt/cost``: a price and a verdict, nothing computed."""

    route: str
    admitted: bool = Field(description="The request would be computed (not refused with 413).")
    refusal: str | None = Field(description="The 413's message when it would be refused, naming the limit.")
    estimate: CostEstimate | None = Field(description="Null when a shape limit refuses it before any price.")


class LimitInForce(BaseModel):
    value: float | int | str = Field(description="The value in force.")
    setting: str = Field(description="The environment variable that sets it.")


class AdmittedExample(BaseModel):
    shape: str
    largest: str = Field(description="The dimension that is grown.")
    value: int = Field(description="Its largest value the limits admit.")


class LimitsResponse(BaseModel):
    """The answer of ``GET /limits``."""

    limits: dict[str, LimitInForce]
    admits: list[AdmittedExample] = Field(description="The largest requests of a few common shapes that are admitted.")


# -- the recurrence's vector-Jacobian product (course assignments) -----------------


def _depth(value: Any) -> str:
    """'tensor' for a tensor object, else 'rank1', 'rank2' or 'rank3' by the nesting of the lists."""
    if isinstance(value, dict | Tensor):
        return "tensor"
    depth = 0
    while isinstance(value, list) and value:
        depth, value = depth + 1, value[0]
    return f"rank{min(max(depth, 1), 3)}"


DenseIn = Annotated[
    Annotated[list[Number], Tag("rank1")]
    | Annotated[list[list[Number]], Tag("rank2")]
    | Annotated[list[list[list[Number]]], Tag("rank3")]
    | Annotated[Tensor, Tag("tensor")],
    Discriminator(_depth),
]
DenseOut = list[Any] | Tensor

_VJP_ARRAY = "nested lists of numbers, or a tensor object; the shape depends on `layout` (see the description)."


class VjpRequest(BaseModel):
    """The recurrence alone, forward and backward, as a course assignment's ``rnn_backward`` computes it.

    Shapes by ``layout`` (N examples, T steps, D input features, H hidden units):

    - ``"cs231n"`` (CS231n's ``rnn_forward``/``rnn_backward``): x (N, T, D), h0 (N, H), Wx (D, H),
      Wh (H, H), b (H,), dh (N, T, H); ``h_t = tanh(x_t Wx + h_{t-1} Wh + b)``. LSTM (``lstm_backward``):
      Wx (D, 4H), Wh (H, 4H), b (4H,), gates stacked i, f, o, g.
    - ``"coursera"`` (the specialisation's ``rnn_cell_backward``/``rnn_backward``): x (D, N, T),
      h0 (H, N) (their a0), Wx (H, D) (Wax), Wh (H, H) (Waa), b (H, 1) (ba), dh (H, N, T) (da);
      ``a_t = tanh(Wax x_t + Waa a_{t-1} + ba)``. LSTM (``lstm_backward``): Wf, Wi, Wc, Wo (H, H + D) on
      ``[a_prev; x_t]`` and bf, bi, bc, bo (H, 1).
    """

    model_config = _REQUEST

    cell: Literal["rnn", "lstm"] = Field(default="rnn", description="The vanilla tanh cell, or the LSTM.")
    layout: Literal["cs231n", "coursera"] = Field(default="cs231n", description="Whose shapes the arrays follow.")
    x: DenseIn = Field(description="Dense inputs: " + _VJP_ARRAY)
    h0: DenseIn = Field(description="Initial hidden state: " + _VJP_ARRAY)
    dh: DenseIn = Field(description="Upstream gradient of every hidden state: " + _VJP_ARRAY)
    Wx: DenseIn | None = Field(default=None, description="Input weights (rnn; cs231n LSTM).")
    Wh: DenseIn | None = Field(default=None, description="Recurrent weights (rnn; cs231n LSTM).")
    b: DenseIn | None = Field(default=None, description="Bias (rnn; cs231n LSTM).")
    Wf: DenseIn | None = Field(default=None, description="Coursera LSTM: forget gate weights (H, H + D).")
    Wi: DenseIn | None = Field(default=None, description="Coursera LSTM: update (input) gate weights.")
    Wc: DenseIn | None = Field(default=None, description="Coursera LSTM: candidate weights.")
    Wo: DenseIn | None = Field(default=None, description="Coursera LSTM: output gate weights.")
    bf: DenseIn | None = Field(default=None, description="Coursera LSTM: forget gate bias (H, 1).")
    bi: DenseIn | None = Field(default=None, description="Coursera LSTM: update gate bias.")
    bc: DenseIn | None = Field(default=None, description="Coursera LSTM: candidate bias.")
    bo: DenseIn | None = Field(default=None, description="Coursera LSTM: output gate bias.")
    c0: DenseIn | None = Field(
        default=None, description="LSTM: initial cell state, the shape of h0 (zeros if omitted)."
    )
    encoding: Literal["json", "base64"] = Field(default="json", description="How the answer's arrays are written.")


class VjpResponse(BaseModel):
    """The answer of ``POST /vjp``: the states and every gradient, in the request's layout."""

    cell: str
    layout: str
    h: DenseOut = Field(description="The hidden states (Coursera's a).")
    c: DenseOut | None = Field(default=None, description="The LSTM's cell states; null for the rnn.")
    gradients: dict[str, DenseOut] = Field(
        description="dx, dh0 and the weights' gradients by the request's names (dWx, dWh, db; Coursera's LSTM "
        "dWf, ..., dbo), and dc0 for the LSTM."
    )


class VjpCompareRequest(VjpRequest):
    """A learner's ``rnn_backward`` answer and its problem (the vanilla cell): the input of ``POST /vjp/compare``."""

    dx: DenseIn | None = Field(default=None, description="Your dx, the shape of x.")
    dh0: DenseIn | None = Field(default=None, description="Your dh0 (Coursera's da0), the shape of h0.")
    dWx: DenseIn | None = Field(default=None, description="Your dWx (dWax).")
    dWh: DenseIn | None = Field(default=None, description="Your dWh (dWaa).")
    db: DenseIn | None = Field(default=None, description="Your db (dba).")
    tolerance: Positive = Field(
        default=1e-6, description="Largest error that passes, relative to the larger of the two arrays."
    )


class VjpGradientComparison(BaseModel):
    max_absolute_error: float | None = Field(description="Null when the shapes differ.")
    passed: bool


class VjpMistake(BaseModel):
    mistake: str = Field(description="The classic mistake's name (service.vjp.Mistake).")
    explanation: str


class VjpCompareResponse(BaseModel):
    """The answer of ``POST /vjp/compare``."""

    passed: bool
    tolerance: float
    parameters: dict[str, VjpGradientComparison]
    diagnosis: list[VjpMistake] = Field(description="Every classic mistake your answer matches (several may fit).")


# -- gradient flow -------------------------------------------------------------------


class FlowRequest(BaseModel):
    """The vanilla RNN and one sequence, as for ``POST /bptt``: the input of ``POST /bptt/flow``."""

    model_config = _REQUEST

    U: MatrixIn = _U
    V: MatrixIn = _V
    W: MatrixIn = _W
    b: VectorIn | None = _B
    c: VectorIn | None = _C
    x: TokenIds = _X
    y: TokenIds = _Y
    s0: VectorIn | None = _S0
    norm: Literal["spectral", "frobenius"] = Field(
        default="spectral",
        description="The norm of the Jacobian products d s_t / d s_k: the largest singular value, or Frobenius "
        "(cheaper: no singular values).",
    )


class FlowResponse(BaseModel):
    """The answer of ``POST /bptt/flow``: how the error flows back through the sequence (docs/derivation.md)."""

    norm: str = Field(description='"spectral" or "frobenius": which norm log10_jacobian_norms holds.')
    log10_jacobian_norms: list[list[float | None]] = Field(
        description="T rows of T: row t, column k <= t, log10 of the norm of d s_t / d s_k (on the diagonal the "
        "identity's: 0 spectral, log10 sqrt(H) Frobenius). null above the diagonal, and where the product is "
        "exactly zero. In logarithms, so products beyond float64's range still have numbers."
    )
    step_jacobian_sigma: list[float] = Field(
        description="Per step k, the largest singular value of the step Jacobian diag(1 - s_k^2) W."
    )
    W_spectral_radius: float = Field(description="max |eigenvalue| of W: below 1 the products shrink (a bound).")
    W_sigma_max: float = Field(description="The largest singular value of W.")
    lag_contributions: dict[str, list[float]] = Field(
        description='{"lag": [0..T-1], "dLdW": [...], "dLdU": [...]}: the Frobenius norms of the parts of dL/dW '
        "and dL/dU brought by errors that travelled exactly `lag` steps back."
    )
    truncation_bias: dict[str, list[float]] = Field(
        description='{"K": [0..T-1], "dLdU": [...], "dLdW": [...], "dLds0": [...]} (and "dLdb" with b): the '
        "relative error ||g_K - g|| / ||g|| of bptt_truncate = K against full BPTT; 0 where both are 0."
    )
