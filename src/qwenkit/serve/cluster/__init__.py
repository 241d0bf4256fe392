"""qwenkit on a Ray Serve cluster: one engine per replica behind one endpoint, cache-aware routing."""
