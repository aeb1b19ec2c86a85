"""The decision service: the same queries through every backend, measured alike, turned into a recommendation."""
