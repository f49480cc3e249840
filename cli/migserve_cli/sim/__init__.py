"""``migserve sim``: a discrete-event simulator that replays request traces against
serving policies, ours being the real scaler decision core.

Modules: ``traces`` (loaders), ``config`` (models, cluster, timings),
``instance`` (an engine as processor sharing), ``cluster`` (MIG slices and
usage), ``agent`` (the simulated mig-agents), ``simulator`` (the event loop,
dispatch and the watcher's windows), ``baselines``/``hindsight``/``ours``
(policies), ``metrics``, ``runner``, ``report``, ``plots`` and ``cli``.
"""
