"""The metrics watcher's pure decision core: no I/O, no clocks, no asyncio.

- ``tpot``: per-source counter windows -> per-instance and per-model TPOT and load.
- ``slo``: per-model SLO state machine -> violation, recovered and underload decisions.
"""
