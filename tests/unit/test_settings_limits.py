"""Settings that bound what a hostile registry costs, and the explicit "any registry" choice."""

from __future__ import annotations

import pytest

from preheat.network import OutboundPolicy
from preheat.settings import Settings


def test_the_manifest_limit_defaults_to_1_mib_and_cannot_pass_4_mib():
    assert Settings.from_env({}).max_manifest_bytes == 1024 * 1024
    assert Settings.from_env({"PREHEAT_MAX_MANIFEST_BYTES": "2097152"}).max_manifest_bytes == 2 * 1024 * 1024
    with pytest.raises(ValueError, match="PREHEAT_MAX_MANIFEST_BYTES must be at most 4194304"):
        Settings.from_env({"PREHEAT_MAX_MANIFEST_BYTES": str(8 * 1024 * 1024)})


@pytest.mark.parametrize("raw", ["*", " * ", "registry.example.com,*"])
def test_a_star_in_allowed_registries_allows_every_host(raw: str):
    # Given the template's explicit choice of every registry
    settings = Settings.from_env({"PREHEAT_ALLOWED_REGISTRIES": raw})

    # Then it is the same as no list: every host may be named
    assert settings.allowed_registries == ()
    assert OutboundPolicy.of(settings).host_allowed("anything.example.org")


def test_a_list_of_allowed_registries_allows_those_hosts_only():
    settings = Settings.from_env({"PREHEAT_ALLOWED_REGISTRIES": "*.example.com, ghcr.io"})

    policy = OutboundPolicy.of(settings)
    assert settings.allowed_registries == ("*.example.com", "ghcr.io")
    assert policy.host_allowed("registry.example.com")
    assert policy.host_allowed("ghcr.io")
    assert not policy.host_allowed("evil.example.org")
