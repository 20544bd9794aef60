"""Dragonfly preheat service: domain, ports, adapters and entry points shared by every function."""
