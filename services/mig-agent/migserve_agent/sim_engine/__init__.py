"""A SIMULATED LLM inference server (TGI and OpenAI APIs) paced by a MIG performance model.

It never runs a model: it emits lorem-ipsum tokens at the speed the perf model
predicts for the slice it pretends to use. For tests, benchmarks and the local
stack. Run it with ``migserve-sim-engine`` or ``python -m migserve_agent.sim_engine``.
"""

from migserve_agent.sim_engine.config import SimEngineConfig
from migserve_agent.sim_engine.perf import MigProfile, PerfModel, ProfileError, parse_profile
from migserve_agent.sim_engine.server import create_app

__all__ = [
    "MigProfile",
    "PerfModel",
    "ProfileError",
    "SimEngineConfig",
    "create_app",
    "parse_profile",
]
