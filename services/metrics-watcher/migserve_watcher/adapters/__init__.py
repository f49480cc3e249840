"""I/O around the watcher's core: scraping /metrics and reading Prometheus text."""
