"""migserve gateway: the OpenAI-compatible HTTP API and the model registry API.

Layers (imports point downwards only):

- ``core``: pure request validation, mapping to ``InferenceJob``, response
  rendering, the live cluster view and the demand throttle (no I/O imports);
- ``adapters``: NATS job client, KV model registry, KV watchers;
- ``dispatch``: one job's life on the bus (hold, retry, stream, cancel);
- ``api``: FastAPI routers, body reading, error handlers, middleware;
- ``app``: the app factory (lifespan yields typed state); ``server`` runs
  uvicorn with the NATS backend; ``__main__`` is the console script.
"""
