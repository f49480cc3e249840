"""migserve gateway: the OpenAI-compatible HTTP API and the model registry API.

Layers (imports point downwards only):

- ``core``: pure request validation, mapping to ``InferenceJob``, response
  rendering, the live cluster view, the demand throttle and the limits
  (admission, per-key rate, cold-start queue) (no I/O imports);
- ``adapters``: NATS job client, KV model registry, KV watchers;
- ``dispatch`` and ``jobrun``: one job's life on the bus (limits, hold,
  retry, stream, lost instances, cancel);
- ``api``: FastAPI routers, the fast path of the inference routes, body
  reading, error handlers, middleware;
- ``app``: the app factory (lifespan yields typed state); ``server`` runs
  uvicorn with the NATS backend; ``__main__`` is the console script.
"""
