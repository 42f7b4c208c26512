"""bptt-service: loss and backpropagation-through-time gradients of a vanilla RNN, over HTTP.

The engine (``service.engine``) is plain numpy and usable on its own; the
FastAPI app is ``service.app:app``; ``service.client`` speaks to it with numpy.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .engine import BatchGradients, Gradients, bptt, bptt_batch, check_inputs, forward
from .errors import BpttError, ComputeError, InputError

__all__ = [
    "BatchGradients",
    "BpttError",
    "ComputeError",
    "Gradients",
    "InputError",
    "__version__",
    "bptt",
    "bptt_batch",
    "check_inputs",
    "forward",
]
