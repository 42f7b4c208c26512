"""The data plane of the Open Inference Protocol: a parsed request admitted and computed.

The HTTP route (``routes``) and the gRPC servicer (``servicer``) decode their
own wire formats into a ``protocol.Call``, then both call ``infer`` here (the HTTP route
``priced``, to compute a request priced cheaper than the hand-off in the event loop): the
same limits, the same cost model and the same engine.
"""

from __future__ import annotations

import numpy as np

from .. import admission, ops
from ..codec import Array, require_finite
from ..compute import Priced
from ..settings import Settings
from . import protocol

__all__ = ["infer", "priced"]


def infer(call: protocol.Call, settings: Settings) -> dict[str, Array]:
    """Admit ``call`` against the limits (413 over one), compute it, and check every output is finite."""
    return priced(call, settings).run()


def priced(call: protocol.Call, settings: Settings) -> Priced[dict[str, Array]]:
    """``call`` admitted against the limits (413 over one) and priced; its ``run`` computes it and checks
    every output is finite."""
    H, C, lengths = protocol.work_size(call)
    admission.check_work(settings, H=H, C=C, lengths=lengths)
    seconds = 0.0
    if H >= 1 and C >= 1 and min(lengths) >= 1:  # else the engine names what is malformed
        float32 = all(call.arrays[n].dtype == np.float32 for n in "UVW")
        cell = protocol.MODELS[call.model].cell
        estimate = admission.bptt_estimate(
            lengths=tuple(lengths),
            H=H,
            C=C,
            K=call.bptt_truncate,
            itemsize=4 if float32 else 8,
            biases=any(n in call.arrays for n in ("b", "b_hh", "c")),
            clip=False,
            cell=cell,
            machine=admission.machine(settings),
        )
        inputs = sum(a.nbytes for a in call.arrays.values())
        shapes = f"B = {len(lengths):,}, longest T = {max(lengths):,}" if len(lengths) > 1 else f"T = {lengths[0]:,}"
        kind = "" if cell == "rnn" else f"model {call.model}, "
        what = f"this request ({kind}{shapes}, H = {H:,}, C = {C:,})"
        admission.admit(settings, estimate, inputs=inputs, what=what)
        seconds = estimate.seconds

    def run() -> dict[str, Array]:
        with ops.engine_timer("v2_infer") as counts:
            results = protocol.infer(call)
            counts["tokens"] = int(results["tokens"][0])
        require_finite(results)
        return results

    return Priced(seconds, run)
