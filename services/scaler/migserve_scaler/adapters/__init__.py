"""I/O around the scaler's core: KV view, event consumer, effect runner."""
