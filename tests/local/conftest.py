"""Fixtures of the local stack's tests: the fixture template running in a LocalStack."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from local.stack import LocalStack
from tests.local.support import FIXTURE_TEMPLATE, Sink


@pytest.fixture(scope="module")
def sink(tmp_path_factory: pytest.TempPathFactory) -> Sink:
    return Sink(tmp_path_factory.mktemp("sink") / "records.jsonl")


@pytest.fixture(scope="module")
def fixture_stack(sink: Sink) -> Iterator[LocalStack]:
    """The fixture template on free ports, queues redelivering after 1 s instead of minutes."""
    with LocalStack(
        FIXTURE_TEMPLATE,
        visibility_timeout=1,
        extra_env={"SINK_FILE": str(sink.path)},
        poller_concurrency=2,
    ) as stack:
        yield stack
