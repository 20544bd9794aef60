"""Fault injection over the local stack, on production's clock scaled by one factor: registries
that fail, throttle, reset, stall, go down for a while, or answer what no registry should;
supernodes that are down, slow, silent, hostile, or fail their tasks; workers that die between
steps; moto that goes away and comes back. Every task must end as its fault should make it end,
with a message naming the registry, blob or supernode at fault, none RUNNING past its deadline,
and no message lost (see campaign.py for how the faults are aimed and the figures counted)."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator

import pytest

from tests.reliability.campaign import (
    DELAYED,
    FAST,
    MANY_LAYERS,
    MOTO_OUTAGE_SECONDS,
    RETRY_CAP,
    SCENARIOS,
    SLOW,
    Case,
    Outcome,
    _item_size,
    run_campaign,
    stored_blob_rows,
    summary_line,
    table,
)

# The whole campaign runs in the module fixture, so within the timeout of the first test (the one
# whose setup starts it): it takes a few minutes on a quiet machine, close to the 300 s every other
# test gets. Its own timeout leaves it room on a loaded two-core machine; a hang still fails.
CAMPAIGN_TIMEOUT_SECONDS = 1200

pytestmark = [
    pytest.mark.integration,
    pytest.mark.xdist_group("reliability"),
    pytest.mark.timeout(CAMPAIGN_TIMEOUT_SECONDS),
]

CASE_NAMES = [f"{scenario.name}[{index}]" for scenario in SCENARIOS for index in range(scenario.copies)]


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield from run_campaign(tmp_path_factory.mktemp("reliability"), monkeypatch)


def describe(case: Case) -> str:
    return json.dumps(
        {"task": case.task_id, "ended_by": case.ended_by, "answer": case.answer, "problems": case.problems()},
        indent=2,
    )


@pytest.mark.parametrize("name", CASE_NAMES)
def test_the_task_ends_as_its_fault_should_make_it(outcome: Outcome, name: str):
    case = outcome.case(name)
    assert case.problems() == [], describe(case)


def test_tasks_whose_start_never_succeeds_end_at_their_deadline_naming_the_last_error(outcome: Outcome):
    """On production's ratios a failure that lasts meets the deadline before its receives run out:
    the worker ends the task then, with what it waited for and the registry's last error."""
    forever = [
        case
        for case in outcome.cases
        if case.scenario.name.startswith("registry-") and "forever" in case.scenario.name
    ]
    at_deadline = [case for case in forever if case.scenario.name != "registry-download-500-forever"]
    assert len(at_deadline) == 5
    for case in at_deadline:
        assert case.ended_by == "worker", describe(case)
        assert case.msg.startswith("timed out: still RUNNING at the deadline"), describe(case)
    assert outcome.figures["ended_by_dead_letter_consumer"] == 0
    # A blob its supernode failed to download is the supernode's verdict, not a retry.
    assert outcome.case("registry-download-500-forever[0]").ended_by == "worker"


def test_registry_outages_up_to_the_cap_end_in_success_with_no_retry_later_than_the_cap(outcome: Outcome):
    for name in ("registry-down-20s-then-back[0]", "registry-down-for-the-cap-then-back[0]"):
        case = outcome.case(name)
        assert case.status == "SUCCESS", describe(case)
        faults = [
            str(seen.fault) for seen in outcome.servers.registry.requests_for(case.repository, "manifest")
        ]
        assert faults[0] == "HTTP 503"
        assert faults[-1] == "ok"
    # Every failed step asked SQS to bring it back within the cap (the queue's own visibility
    # timeout, twelve times longer, was never waited for).
    delays = outcome.worker_faults.retry_delays
    assert delays
    assert max(delays) <= RETRY_CAP


def test_a_thousand_failed_layers_with_long_errors_are_saved_in_one_item(outcome: Outcome):
    case = outcome.case(f"{MANY_LAYERS}-layers-all-fail-with-long-errors[0]")
    assert case.item is not None, describe(case)
    rows = stored_blob_rows(case.item)
    assert len(rows) == MANY_LAYERS + 1
    assert all(row[2] == "FAILED" and row[6] for row in rows)
    assert _item_size(case.item) < 400 * 1024


def test_hostile_supernode_answers_reached_it(outcome: Outcome):
    assert set(outcome.servers.hostile.answered) == {"deep", "huge", "types", "utf8"}


def test_recovering_registries_were_broken_first(outcome: Outcome):
    registry = outcome.servers.registry
    checked = 0
    for case in outcome.cases:
        for kind, script, _ in case.scenario.registry:
            if not script.first:
                continue
            by_path: dict[str, list[str]] = {}
            for seen in registry.requests_for(case.repository, kind):
                by_path.setdefault(seen.path, []).append(str(seen.fault))
            # Each path (every blob, for probes) got its faulty answers, then one that went through.
            expected = [*map(str, script.first), "ok"]
            assert by_path, describe(case)
            for path, faults in by_path.items():
                assert faults[: len(expected)] == expected, (path, faults)
            checked += 1
    assert checked == 9
    # One step tries a manifest 4 times: the fifth 500 was answered to a redelivery.
    assert len(registry.requests_for("rel/registry-500-past-one-delivery-0", "manifest")) >= 6


def test_retry_after_is_honoured(outcome: Outcome):
    seen = outcome.servers.registry.requests_for("rel/registry-429-then-ok-0", "manifest")
    assert [str(s.fault) for s in seen[:3]] == ["HTTP 429 Retry-After 1", "HTTP 429 Retry-After 1", "ok"]
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(seen[:3])]
    assert all(gap >= 0.95 for gap in gaps), gaps


def test_supernode_faults_reached_their_supernodes(outcome: Outcome):
    held = outcome.servers.slow.held
    for scenario in (
        "supernode-slow-create-then-ok",
        "supernode-slow-status-then-ok",
        "supernode-slow-forever",
    ):
        assert any(repository == f"rel/{scenario}-0" for repository, _, _ in held), scenario
    flipped = outcome.case("supernode-flips-to-failed[0]")
    assert set(flipped.labels) <= {url.rsplit("/", 1)[-1] for url in outcome.servers.flip.created.values()}


def test_killed_workers_died_where_meant_and_their_tasks_still_ended_right(outcome: Outcome):
    faults = outcome.worker_faults
    fired = {(f.what, f.repository): f.task_id for f in faults.fired}
    assert len(fired) == 4, (fired, outcome.figures["tasks"])
    killed = [
        fired[("kill after the progress save", "rel/worker-killed-after-progress-save-0")],
        fired[("kill after sending check 1", "rel/worker-killed-after-send-in-start-0")],
        fired[("kill after sending check 2", "rel/worker-killed-after-send-in-check-0")],
    ]
    # Each kill took its whole invocation down: no message of that batch was deleted.
    assert set(killed) <= faults.crashed_tasks
    # A start killed before its task was marked dispatched was redelivered and resolved the image again.
    registry = outcome.servers.registry
    for repository in ("rel/worker-killed-after-progress-save-0", "rel/worker-killed-after-send-in-start-0"):
        assert len(registry.requests_for(repository, "manifest")) >= 2, repository
    by_id = {case.task_id: case for case in outcome.cases}
    for task_id in killed:
        assert by_id[task_id].problems() == [], describe(by_id[task_id])


def test_moto_went_away_with_tasks_in_flight_and_they_ended_right(outcome: Outcome):
    assert ("hook after the progress save", "rel/moto-restarted-between-steps-0") in {
        (f.what, f.repository) for f in outcome.worker_faults.fired
    }
    assert len(outcome.outage.windows) == 1
    down, up = outcome.outage.windows[0]
    assert up - down >= MOTO_OUTAGE_SECONDS
    # Most of the campaign was in flight: the outage struck between their steps too, and steps
    # failed on it (to be retried by redelivery).
    assert len(outcome.mid_flight_at_outage) >= 10
    assert sum(outcome.worker_faults.aws_failures.values()) >= 1
    by_id = {case.task_id: case for case in outcome.cases}
    for task_id in outcome.mid_flight_at_outage:
        assert by_id[task_id].problems() == [], describe(by_id[task_id])


def test_every_blob_of_a_successful_task_is_in_its_supernodes_cache(outcome: Outcome):
    caches = {
        FAST: outcome.servers.fast.cached_digests(),
        SLOW: outcome.servers.fast.cached_digests(),  # the slow proxy's upstream
        DELAYED: outcome.servers.delayed.cached_digests(),
    }
    for case in outcome.cases:
        if case.scenario.expect != "SUCCESS":
            continue
        if case.scenario.file:
            content = outcome.servers.registry.file(case.repository)
            wanted = {f"sha256:{hashlib.sha256(content).hexdigest()}"}
        else:
            wanted = set(case.labels)
        assert wanted <= caches[case.scenario.target], describe(case)


def test_figures(outcome: Outcome, tmp_path_factory: pytest.TempPathFactory, record_property):
    figures = outcome.figures
    results = tmp_path_factory.mktemp("reliability-results") / "results.json"
    results.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    line = summary_line(figures)
    print(f"\n{table(figures)}\nresults: {results}\n{line}")
    record_property("reliability", line)
    assert figures["lost"] == 0, table(figures)
    assert figures["terminal"] == figures["submitted"] == len(CASE_NAMES), table(figures)
    assert figures["correct"] == figures["submitted"], table(figures)
