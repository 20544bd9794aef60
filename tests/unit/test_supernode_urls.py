"""PREHEAT_SUPERNODES: a base URL carrying user:password@ is refused, without quoting the password
(the URL is shown in task messages, logs and /api/check)."""

from __future__ import annotations

import pytest

from preheat.settings import Settings


@pytest.mark.parametrize(
    "url",
    [
        "http://admin:hunter2pw@sn1:8002",
        "https://hunter2pw@manager.example.com",
        "http://sn0:8002,http://admin:hunter2pw@sn1:8002/",
    ],
)
def test_a_supernode_url_with_user_info_is_refused_without_quoting_it(url: str) -> None:
    with pytest.raises(ValueError, match="must not carry user:password@") as caught:
        Settings.from_env({"PREHEAT_SUPERNODES": url})
    assert "hunter2pw" not in str(caught.value)
    assert "PREHEAT_DRAGONFLY2_TOKEN" in str(caught.value)


def test_a_url_that_is_not_http_is_refused_without_quoting_its_user_info() -> None:
    with pytest.raises(ValueError, match="http\\(s\\) base URLs") as caught:
        Settings.from_env({"PREHEAT_SUPERNODES": "admin:hunter2pw@sn1:8002"})
    assert "hunter2pw" not in str(caught.value)


def test_plain_supernode_urls_are_kept() -> None:
    settings = Settings.from_env({"PREHEAT_SUPERNODES": "http://sn1:8002/, https://manager.example.com"})
    assert settings.supernodes == ("http://sn1:8002", "https://manager.example.com")
