"""Label Studio ML backend: protocol server, queues, workers and Label Studio formats (no torch here)."""
