"""Engine adapters: how to launch one inference server on one slice, per engine kind."""
