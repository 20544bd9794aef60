"""Test and benchmark doubles: servers whose answers a test scripts (not part of ``make run``)."""
