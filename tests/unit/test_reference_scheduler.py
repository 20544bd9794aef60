"""The reference Dragonfly 2 scheduler (local/dragonfly2_scheduler.py), over a real gRPC channel with
the project's bindings: validation, scopes and narrowing, real downloads, per-peer stats, hosts,
health and faults, both task id modes, and unredacted records."""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator

import grpc
import pytest
from dragonfly_api import scheduler_pb2, scheduler_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from local.dragonfly2_scheduler import ReferenceScheduler
from local.stack import LocalStack, stack_from_environ
from preheat.task_ids import dragonfly2_blob_digest_task_id, dragonfly2_task_id
from tests.support.blob_registry import BlobRegistry, digest
from tests.support.origin import Origin

WAIT = 20  # seconds a test waits for an event before it fails; never reached when all is well
BODY = b"model weights " * 4096
BLOB_PATH = f"/v2/team/model/blobs/sha256:{hashlib.sha256(BODY).hexdigest()}"
SEEDS = {"seed-peer-0", "seed-peer-1"}
NORMALS = {"peer-0", "peer-1", "peer-2"}


@pytest.fixture
def scheduler() -> Iterator[ReferenceScheduler]:
    with ReferenceScheduler() as running:
        yield running


@pytest.fixture
def stub(scheduler: ReferenceScheduler) -> Iterator[scheduler_pb2_grpc.SchedulerStub]:
    with grpc.insecure_channel(scheduler.address) as channel:
        yield scheduler_pb2_grpc.SchedulerStub(channel)


@pytest.fixture
def origin() -> Iterator[Origin]:
    with contextlib.closing(Origin({BLOB_PATH: BODY})) as serving:
        yield serving


def preheat_file(
    stub: scheduler_pb2_grpc.SchedulerStub, url: str, scope: str = "all_peers", **fields: object
) -> None:
    stub.PreheatFile(scheduler_pb2.PreheatFileRequest(url=url, scope=scope, **fields), timeout=WAIT)


def rpc_error(call: object) -> grpc.RpcError:
    assert callable(call)
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value


# -- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"url": "", "scope": "all_peers"}, "invalid PreheatFileRequest.Url: value must be absolute"),
        (
            {"url": "http://h/%zz", "scope": "all_peers"},
            "invalid PreheatFileRequest.Url: value must be a valid URI",
        ),
        ({"url": "http://h/f", "scope": ""}, "invalid PreheatFileRequest.Scope: value does not match regex"),
        ({"url": "http://h/f", "scope": "every_peer"}, "invalid PreheatFileRequest.Scope"),
        (
            {"url": "http://h/f", "scope": "all_peers", "count": 201},
            "Count: value must be inside range [1, 200]",
        ),
        (
            {"url": "http://h/f", "scope": "all_peers", "percentage": 101},
            "Percentage: value must be inside range [1, 100]",
        ),
        (
            {"url": "http://h/f", "scope": "all_peers", "piece_length": 1024},
            "PieceLength: value must be inside",
        ),
    ],
)
def test_the_validator_refuses_what_the_real_one_refuses(scheduler, stub, fields, complaint):
    error = rpc_error(lambda: stub.PreheatFile(scheduler_pb2.PreheatFileRequest(**fields), timeout=WAIT))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert complaint in error.details()
    assert scheduler.preheats == []
    assert scheduler.requests[-1][0] == "PreheatFile"


def test_an_image_preheat_is_validated_too(scheduler, stub):
    error = rpc_error(
        lambda: stub.PreheatImage(
            scheduler_pb2.PreheatImageRequest(url="http://h/v2/a/manifests/v1"), timeout=WAIT
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid PreheatImageRequest.Scope" in error.details()


# -- scopes and narrowing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "fields", "expected"),
    [
        ("all_seed_peers", {}, SEEDS),
        ("all_peers", {}, NORMALS),
        ("all_peers", {"ips": ["127.0.2.2", "10.9.9.9"]}, {"peer-1"}),
        ("all_seed_peers", {"ips": ["127.0.1.2"]}, {"seed-peer-1"}),
        ("all_peers", {"count": 2}, {"peer-0", "peer-1"}),
        ("all_peers", {"count": 200}, NORMALS),
        ("all_seed_peers", {"count": 1}, {"seed-peer-0"}),
        ("all_peers", {"percentage": 67}, {"peer-0", "peer-1"}),  # 3 * 67 // 100 = 2
        ("all_peers", {"percentage": 10}, {"peer-0"}),  # rounds down to 0, at least 1
        ("all_peers", {"ips": ["127.0.2.3"], "count": 2}, {"peer-2"}),  # ips first
        # The validator lets an explicit 0 through (it checks non-zero values only), and the
        # selection then takes no peer at all, as the real one's slice [:0] does.
        ("all_peers", {"count": 0}, set()),
        ("all_seed_peers", {"percentage": 0}, set()),
    ],
)
def test_each_scope_selects_its_peers(scheduler, stub, origin, scope, fields, expected):
    url = origin.url(BLOB_PATH)
    preheat_file(stub, url, scope, **fields)
    task_id = dragonfly2_task_id(url)
    assert scheduler.wait_finished(task_id, len(expected), WAIT)
    assert set(scheduler.holders(task_id)) == expected
    assert set(scheduler.preheats[-1].hostnames) == expected


def test_single_seed_peer_downloads_on_exactly_one_seed_peer(scheduler, stub, origin):
    url = origin.url(BLOB_PATH)
    preheat_file(stub, url, "single_seed_peer", count=3)
    task_id = dragonfly2_task_id(url)
    assert scheduler.wait_finished(task_id, 1, WAIT)
    holders = scheduler.holders(task_id)
    assert len(holders) == 1
    assert set(holders) <= SEEDS
    assert len(origin.requests_to(BLOB_PATH)) == 1


def test_ips_that_match_no_peer_download_nothing_and_say_so(scheduler, stub, origin):
    url = origin.url(BLOB_PATH)
    preheat_file(stub, url, "all_peers", ips=["10.0.0.1"])
    assert scheduler.preheats[-1].error == "no peer found for ips ['10.0.0.1']"
    assert scheduler.holders(dragonfly2_task_id(url)) == {}
    assert origin.requests_to(BLOB_PATH) == []


# -- downloads -------------------------------------------------------------------------------------


def test_every_selected_peer_fetches_with_the_requests_headers(scheduler, stub, origin):
    url = origin.url(BLOB_PATH) + "?X-Amz-Signature=s1&keep=1"
    preheat_file(stub, url, "all_seed_peers", header={"Authorization": "Bearer t0ken", "X-Trace": "7"})
    task_id = dragonfly2_task_id(url)
    assert task_id == dragonfly2_task_id(origin.url(BLOB_PATH) + "?keep=1&X-Amz-Signature=other")
    assert scheduler.wait_finished(task_id, 2, WAIT)
    seen = origin.requests_to(BLOB_PATH)
    assert len(seen) == 2
    assert all(headers["Authorization"] == "Bearer t0ken" and headers["X-Trace"] == "7" for headers in seen)


def test_a_redirect_to_another_host_drops_authorization_only(scheduler, stub, origin):
    origin.redirects["/v2/team/model/blobs/moved"] = origin.url(BLOB_PATH).replace("127.0.0.1", "localhost")
    url = origin.url("/v2/team/model/blobs/moved")
    preheat_file(stub, url, "all_peers", count=1, header={"Authorization": "Bearer t0ken", "X-Trace": "7"})
    assert scheduler.wait_finished(dragonfly2_task_id(url), 1, WAIT)
    (first,) = origin.requests_to("/v2/team/model/blobs/moved")
    (second,) = origin.requests_to(BLOB_PATH)
    assert first["Authorization"] == "Bearer t0ken"
    assert "Authorization" not in second
    assert second["X-Trace"] == "7"


def test_a_blob_whose_bytes_do_not_match_its_digest_fails_and_is_not_listed(scheduler, stub, origin):
    wrong = f"/v2/team/model/blobs/sha256:{'0' * 64}"
    origin.files[wrong] = BODY
    url = origin.url(wrong)
    preheat_file(stub, url, "all_peers", count=1)
    task_id = dragonfly2_task_id(url)
    scheduler.fail_peer("peer-1")  # a second failure, of another kind, to wait on together
    preheat_file(stub, url, "all_peers", ips=["127.0.2.2"])
    assert scheduler.wait_holders(task_id, {"peer-0": "failed", "peer-1": "failed"}, WAIT)
    assert "digest mismatch" in scheduler.errors(task_id)["peer-0"]
    assert scheduler.errors(task_id)["peer-1"] == "peer peer-1 failed"
    assert stub.StatFile(scheduler_pb2.StatFileRequest(url=url), timeout=WAIT).peers == []


def test_stat_file_lists_downloading_and_finished_peers(scheduler, stub, origin):
    url = origin.url(BLOB_PATH)
    task_id = dragonfly2_task_id(url)
    scheduler.peer_delay("peer-2", 3600)  # held downloading until released below
    preheat_file(stub, url, "all_peers")
    assert scheduler.wait_finished(task_id, 2, WAIT)
    answer = stub.StatFile(scheduler_pb2.StatFileRequest(url=url), timeout=WAIT)
    assert {(p.hostname, p.ip, p.cached_files[0].is_finished) for p in answer.peers} == {
        ("peer-0", "127.0.2.1", True),
        ("peer-1", "127.0.2.2", True),
        ("peer-2", "127.0.2.3", False),
    }
    assert all(p.cached_files[0].url == url for p in answer.peers)
    scheduler.peer_delay("peer-2", 0)
    assert scheduler.wait_finished(task_id, 3, WAIT)


def test_a_delay_for_every_peer_holds_them_all_until_released(scheduler, stub, origin):
    url = origin.url(BLOB_PATH)
    task_id = dragonfly2_task_id(url)
    scheduler.peer_delay(None, 3600)
    scheduler.peer_delay("peer-0", 0)  # a peer's own delay wins over the default
    preheat_file(stub, url, "all_peers")
    assert scheduler.wait_holders(
        task_id, {"peer-0": "finished", "peer-1": "downloading", "peer-2": "downloading"}, WAIT
    )
    answer = stub.StatFile(scheduler_pb2.StatFileRequest(url=url), timeout=WAIT)
    assert {p.hostname: p.cached_files[0].is_finished for p in answer.peers} == {
        "peer-0": True,
        "peer-1": False,
        "peer-2": False,
    }
    released = time.time()
    scheduler.peer_delay(None, 0)
    assert scheduler.wait_finished(task_id, 3, WAIT)
    finished = scheduler.finished_at(task_id)
    assert finished["peer-0"] <= released <= min(finished["peer-1"], finished["peer-2"])


def test_stat_file_computes_the_id_with_the_requests_tag_application_and_piece_length(
    scheduler, stub, origin
):
    url = origin.url(BLOB_PATH)
    fields = {"tag": "t", "application": "app", "piece_length": 4 << 20, "filtered_query_params": ["x"]}
    preheat_file(stub, url, "all_peers", count=1, **fields)
    task_id = dragonfly2_task_id(url, ["x"], "t", "app", 4 << 20)
    assert scheduler.wait_finished(task_id, 1, WAIT)
    assert stub.StatFile(scheduler_pb2.StatFileRequest(url=url), timeout=WAIT).peers == []
    assert len(stub.StatFile(scheduler_pb2.StatFileRequest(url=url, **fields), timeout=WAIT).peers) == 1


def test_an_evicted_task_is_gone_and_a_new_preheat_fetches_it_again(scheduler, stub, origin):
    url = origin.url(BLOB_PATH)
    task_id = dragonfly2_task_id(url)
    preheat_file(stub, url, "all_seed_peers")
    assert scheduler.wait_finished(task_id, 2, WAIT)
    preheat_file(stub, url, "all_seed_peers")  # held already: nothing fetched
    assert len(origin.requests_to(BLOB_PATH)) == 2
    assert scheduler.evict(task_id, "seed-peer-0") == 1
    assert scheduler.holders(task_id) == {"seed-peer-1": "finished"}
    assert [
        p.hostname for p in stub.StatFile(scheduler_pb2.StatFileRequest(url=url), timeout=WAIT).peers
    ] == ["seed-peer-1"]
    preheat_file(stub, url, "all_seed_peers")
    assert scheduler.wait_finished(task_id, 2, WAIT)
    assert len(origin.requests_to(BLOB_PATH)) == 3


# -- images ----------------------------------------------------------------------------------------


def test_an_image_is_resolved_with_a_token_for_its_credentials_and_preheated(scheduler, stub):
    with BlobRegistry(auth="token") as registry:
        stub.PreheatImage(
            scheduler_pb2.PreheatImageRequest(
                url=registry.manifest_url(), username="alice", password="s3cret", scope="all_seed_peers"
            ),
            timeout=WAIT,
        )
        urls = registry.blob_urls("amd64")  # the default platform: config, then the layers
        assert [url for url, _ in scheduler.preheats[-1].tasks] == urls
        for url in urls:
            assert scheduler.wait_finished(dragonfly2_task_id(url), 2, WAIT)
        (token,) = registry.tokens.requests
        assert (token.user, token.scopes) == ("alice", ("repository:demo/app:pull",))
        blob_gets = registry.registry.requests_to("/v2/demo/app/blobs/")
        assert len(blob_gets) == 6
        assert all((r.header("Authorization") or "").startswith("Bearer ") for r in blob_gets)
        assert all(r.header("Authorization") is None for r in registry.storage.requests)
        accept = registry.registry.requests_to("/v2/demo/app/manifests/v1")[0].header("Accept") or ""
        assert "application/vnd.oci.image.index.v1+json" in accept
        assert "application/vnd.docker.distribution.manifest.v2+json" in accept

        answer = stub.StatImage(
            scheduler_pb2.StatImageRequest(url=registry.manifest_url(), username="alice", password="s3cret"),
            timeout=WAIT,
        )
    assert [(layer.url, layer.is_finished) for layer in answer.image.layers] == [(url, True) for url in urls]
    assert {p.hostname: [(c.url, c.is_finished) for c in p.cached_layers] for p in answer.peers} == {
        host: [(url, True) for url in urls] for host in SEEDS
    }


def test_a_basic_header_goes_to_the_registry_as_given_and_the_platform_narrows_the_index(scheduler, stub):
    with BlobRegistry(auth="basic") as registry:
        stub.PreheatImage(
            scheduler_pb2.PreheatImageRequest(
                url=registry.manifest_url(),
                header={"Authorization": registry.basic()},
                platform="linux/arm64",
                scope="all_peers",
                count=1,
            ),
            timeout=WAIT,
        )
        urls = registry.blob_urls("arm64")
        for url in urls:
            assert scheduler.wait_finished(dragonfly2_task_id(url), 1, WAIT)
        assert registry.tokens.requests == []
        assert {r.header("Authorization") for r in registry.registry.requests} == {registry.basic()}


def test_an_image_that_cannot_be_resolved_is_invalid_argument(scheduler, stub):
    with BlobRegistry(auth="token") as registry:
        error = rpc_error(
            lambda: stub.PreheatImage(
                scheduler_pb2.PreheatImageRequest(url=registry.manifest_url("nope"), scope="all_peers"),
                timeout=WAIT,
            )
        )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("failed to resolve manifests: failed to pull image manifest")
    assert scheduler.preheats == []


def test_a_corrupt_layer_fails_on_every_peer(scheduler, stub):
    with BlobRegistry() as registry:
        bad = registry.platforms[0].layers[0]
        registry.corrupt.add(digest(bad))
        stub.PreheatImage(
            scheduler_pb2.PreheatImageRequest(url=registry.manifest_url(), scope="all_seed_peers"),
            timeout=WAIT,
        )
        good = registry.blob_url(registry.platforms[0].config)
        assert scheduler.wait_finished(dragonfly2_task_id(good), 2, WAIT)
        assert scheduler.wait_holders(
            dragonfly2_task_id(registry.blob_url(bad)), dict.fromkeys(SEEDS, "failed"), WAIT
        )


@pytest.mark.parametrize("per_request", [True, False])
def test_blob_digest_ids_by_request_or_scheduler_wide(per_request, stub, scheduler):
    with contextlib.ExitStack() as stack:
        if not per_request:
            scheduler = stack.enter_context(ReferenceScheduler(digest_ids=True))
            channel = stack.enter_context(grpc.insecure_channel(scheduler.address))
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
        registry = stack.enter_context(BlobRegistry())
        request = scheduler_pb2.PreheatImageRequest(
            url=registry.manifest_url(),
            scope="single_seed_peer",
            enable_task_id_based_blob_digest=per_request,
        )
        stub.PreheatImage(request, timeout=WAIT)
        for url in registry.blob_urls():
            digest_id = dragonfly2_blob_digest_task_id(url)
            assert digest_id is not None
            assert digest_id == url.rsplit(":", 1)[1]
            assert scheduler.wait_finished(digest_id, 1, WAIT)
            assert scheduler.holders(dragonfly2_task_id(url)) == {}
        answer = stub.StatImage(
            scheduler_pb2.StatImageRequest(
                url=registry.manifest_url(), enable_task_id_based_blob_digest=per_request
            ),
            timeout=WAIT,
        )
        assert all(layer.is_finished for layer in answer.image.layers)
        assert len(answer.image.layers) == 3


# -- hosts, health, faults ---------------------------------------------------------------------------


def test_list_hosts_gives_every_peer_with_its_type(scheduler, stub):
    hosts = stub.ListHosts(scheduler_pb2.ListHostsRequest(), timeout=WAIT).hosts
    assert {(h.hostname, h.ip, h.type, h.port) for h in hosts} == {
        ("seed-peer-0", "127.0.1.1", 1, 4000),
        ("seed-peer-1", "127.0.1.2", 1, 4000),
        ("peer-0", "127.0.2.1", 0, 4000),
        ("peer-1", "127.0.2.2", 0, 4000),
        ("peer-2", "127.0.2.3", 0, 4000),
    }
    assert {h.id for h in hosts if h.type == 1} == {
        "127.0.1.1-seed-peer-0-seed",
        "127.0.1.2-seed-peer-1-seed",
    }
    seeds = stub.ListHosts(scheduler_pb2.ListHostsRequest(type=1), timeout=WAIT).hosts
    assert {h.hostname for h in seeds} == SEEDS


def test_health_is_serving_until_switched_off(scheduler):
    with grpc.insecure_channel(scheduler.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        check = health_pb2.HealthCheckRequest()
        assert health.Check(check, timeout=WAIT).status == health_pb2.HealthCheckResponse.SERVING
        scheduler.set_serving(False)
        assert health.Check(check, timeout=WAIT).status == health_pb2.HealthCheckResponse.NOT_SERVING
        named = health_pb2.HealthCheckRequest(service="scheduler.v2.Scheduler")
        assert health.Check(named, timeout=WAIT).status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_a_hanging_scheduler_takes_calls_and_answers_none_until_released(scheduler, stub):
    scheduler.hang(True)
    error = rpc_error(lambda: stub.ListHosts(scheduler_pb2.ListHostsRequest(), timeout=0.3))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    with grpc.insecure_channel(scheduler.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        error = rpc_error(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=0.3))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert [method for method, _ in scheduler.requests] == ["ListHosts", "Check"]
    pending = stub.ListHosts.future(scheduler_pb2.ListHostsRequest(), timeout=WAIT)
    scheduler.hang(False)
    assert len(pending.result().hosts) == 5


def test_fail_next_answers_the_code_that_many_times(scheduler, stub):
    scheduler.fail_next(2)
    for _ in range(2):
        assert rpc_error(lambda: stub.ListHosts(scheduler_pb2.ListHostsRequest(), timeout=WAIT)).code() == (
            grpc.StatusCode.UNAVAILABLE
        )
    assert len(stub.ListHosts(scheduler_pb2.ListHostsRequest(), timeout=WAIT).hosts) == 5
    scheduler.fail_next(1, grpc.StatusCode.INTERNAL, method="StatFile")
    assert len(stub.ListHosts(scheduler_pb2.ListHostsRequest(), timeout=WAIT).hosts) == 5
    error = rpc_error(lambda: stub.StatFile(scheduler_pb2.StatFileRequest(url="http://h/f"), timeout=WAIT))
    assert error.code() == grpc.StatusCode.INTERNAL
    assert stub.StatFile(scheduler_pb2.StatFileRequest(url="http://h/f"), timeout=WAIT).peers == []
    assert len(scheduler.requests) == 6


def test_requests_are_recorded_as_they_arrived_credentials_included(scheduler, stub, origin):
    preheat_file(
        stub, origin.url(BLOB_PATH), "all_peers", count=1, header={"Authorization": "Bearer s3cret-t0ken"}
    )
    with BlobRegistry(auth="token") as registry:
        stub.PreheatImage(
            scheduler_pb2.PreheatImageRequest(
                url=registry.manifest_url(), username="alice", password="s3cret", scope="all_peers", count=1
            ),
            timeout=WAIT,
        )
    (file_method, file_request), (image_method, image_request) = scheduler.requests
    assert file_method == "PreheatFile"
    assert file_request["header"] == {"Authorization": "Bearer s3cret-t0ken"}
    assert image_method == "PreheatImage"
    assert (image_request["username"], image_request["password"]) == ("alice", "s3cret")


# -- the local stack -------------------------------------------------------------------------------


def test_the_local_stack_runs_the_scheduler_in_place_of_the_supernode():
    with LocalStack(target="dragonfly2-scheduler") as stack:
        assert stack.supernode is None
        assert stack.reference_scheduler is not None
        address = stack.reference_scheduler.address
        assert stack.supernodes == [address]
        assert stack.environment["PREHEAT_SUPERNODE_API"] == "dragonfly2-scheduler"
        assert stack.environment["PREHEAT_SUPERNODES"] == address
        with grpc.insecure_channel(address) as channel:
            hosts = scheduler_pb2_grpc.SchedulerStub(channel).ListHosts(
                scheduler_pb2.ListHostsRequest(), timeout=WAIT
            )
        assert len(hosts.hosts) == 5
    with pytest.raises(ValueError, match="PREHEAT_LOCAL_TARGET"):
        LocalStack(target="dragonfly3")
    assert (
        stack_from_environ({"PREHEAT_LOCAL_TARGET": "dragonfly2-scheduler"}).target == "dragonfly2-scheduler"
    )
    assert stack_from_environ({}).target == "dragonfly1"
