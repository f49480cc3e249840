"""The gateway's pure core: request validation and mapping, rendering, the live
view of the cluster and the demand throttle. No asyncio, NATS, HTTP or
Prometheus imports here; everything is tested with plain tables."""
