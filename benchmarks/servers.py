"""Comparison servers for the HTTP benchmarks, on the same stack (uvicorn + FastAPI).

- ``plain``: the same API written the plain way: pydantic ``list[list[float]]``
  in, FastAPI's default JSON out, the seed's loop for the gradients.
- ``echo``: the transport floor: reads the request body and answers with
  ``size`` bytes, so the bytes of a real exchange move and nothing is computed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request, Response
from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import seed

plain = FastAPI()
echo = FastAPI()


class PlainRequest(BaseModel):
    U: list[list[float]]
    V: list[list[float]]
    W: list[list[float]]
    x: list[int]
    y: list[int]
    bptt_truncate: int | None = None


class PlainResponse(BaseModel):
    loss: float
    dLdU: list[list[float]]
    dLdV: list[list[float]]
    dLdW: list[list[float]]


@plain.post("/bptt", response_model=PlainResponse)
def plain_bptt(req: PlainRequest):
    U, V, W = np.array(req.U), np.array(req.V), np.array(req.W)
    K = len(req.y) if req.bptt_truncate is None else req.bptt_truncate
    dU, dV, dW = seed.bptt(U, V, W, req.x, req.y, K)
    loss = seed.calculate_total_loss(U, V, W, req.x, req.y)
    return {"loss": loss, "dLdU": dU.tolist(), "dLdV": dV.tolist(), "dLdW": dW.tolist()}


@plain.get("/healthz")
@echo.get("/healthz")
def healthz():
    return {"status": "ok"}


@echo.post("/echo")
async def echo_bytes(request: Request, size: int) -> Response:
    await request.body()
    return Response(b"x" * size, media_type="application/octet-stream")
