"""Test and benchmark doubles: servers whose answers a test scripts, and a probe of what the code
puts on AWS (not part of ``make run``)."""
