"""The Open Inference Protocol (KServe V2 / NVIDIA Triton): wire models, decoding and encoding, routes.

- ``wire``: the protocol's JSON bodies as pydantic models.
- ``protocol``: a request's tensors to the engine's arrays, results to an answer (binary extension included).
- ``routes``: the HTTP routes, calling the same admission, pool and engine as the REST routes.
"""
