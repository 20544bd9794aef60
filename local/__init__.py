"""Tools for running the Preheat service locally, without AWS or a Dragonfly cluster."""
