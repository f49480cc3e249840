"""The engine bridge: one process beside one engine instance.

It pulls the model's jobs from the shared JetStream work queue (one
outstanding pull per free engine slot, so dispatch is load-aware), calls the
engine's OpenAI-compatible streaming API over HTTP, streams the tokens back to
the job's reply inbox, and exports engine-agnostic token-latency metrics.

Modules, one responsibility each:

- ``settings``: the command line and environment, validated once
- ``sse`` and ``dialect``: pure wire formats (engine requests, SSE parsing)
- ``policy``: pure decisions (retry or give up, expiry, finish reasons)
- ``running``: the jobs in hand and the cancels seen recently
- ``http1``: a small keep-alive HTTP/1.1 client (one write per request)
- ``engine``: the HTTP adapter to the engine; ``gate``: is the engine ready
- ``slots``: one long-lived pull per free slot, cut short when the gate closes
- ``metrics`` and ``http``: Prometheus series and their tiny HTTP server
- ``jobs``: handling one job message; ``app``: the wiring; ``__main__``: the process
"""
