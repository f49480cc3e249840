"""GPU backends: the NVML-shaped operations the agent needs, behind one Protocol."""
