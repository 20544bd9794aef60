"""Node-side hits on the Dragonfly 2 scheduler path: after a preheat, how many of an image's blobs a
node finds held finished on the scheduler's peers, for each task-id mode the service preheated in
and each a node computes its ids in.

    .venv/bin/python -m bench.node_hits [--layers 3]

What it runs: a real registry (``docker-registry``, the image pushed with ``skopeo``: a config blob
and ``--layers`` layers), then, for each mode the service preheats in (``PREHEAT_DRAGONFLY2_TASK_IDS``
``url`` or ``blob-digest``), a fresh reference scheduler (``local/``, real gRPC, its peers really
downloading each blob) and the local stack (real handlers, moto, the SQS poller) driving it with
``PREHEAT_SUPERNODE_API=dragonfly2-scheduler``; one image preheat to SUCCESS.

Then the node's side, computed here from the URL a node pulls (``http://<registry>/v2/<name>/blobs/
<digest>``, every blob the manifest lists, read from the registry, not from the service's answer):
a node of a cluster with URL-based ids asks for ``preheat.task_ids.dragonfly2_task_id(url)``; one
with ``enableTaskIDBasedBlobDigest`` for ``dragonfly2_blob_digest_task_id(url)``. A blob is a hit
when some peer of the scheduler holds that task finished. Targets: every blob a hit when the node's
mode is the preheat's; none when they differ (a cluster must be preheated in its nodes' mode, which
is why the mode is a setting).

Results go to ``bench/results/node_hits.json``; each figure is ``{value, target, met, ...}``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import requests

from bench import RESULTS
from bench.aws_calls import push_image
from bench.common import api_session, figure, figure_rows, quiet_logs, table, write_result
from local.dragonfly2_scheduler import ReferenceScheduler
from local.registry import REGISTRY_BINARY, SKOPEO_BINARY, RegistryServer, missing_tools
from local.stack import LocalStack
from preheat.task_ids import dragonfly2_blob_digest_task_id, dragonfly2_task_id

NAME = "node_hits"
MODES = ("url", "blob-digest")
QUIET_FUNCTIONS = {"POWERTOOLS_LOG_LEVEL": "WARNING"}
MANIFEST_ACCEPT = "application/vnd.oci.image.manifest.v1+json"
WAIT_SECONDS = 120.0

QUICK_ARGS = ["--layers", "1"]


def digest_id(url: str) -> str:
    found = dragonfly2_blob_digest_task_id(url)
    if found is None:
        raise ValueError(f"{url} is not a blob URL")
    return found


NODE_IDS: dict[str, Callable[[str], str]] = {"url": dragonfly2_task_id, "blob-digest": digest_id}


def node_blob_urls(registry: RegistryServer, repository: str, tag: str) -> list[str]:
    """The URLs a node pulls: the manifest's config and layers, as registry blob URLs."""
    answer = requests.get(
        f"{registry.url}/v2/{repository}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT}, timeout=30
    )
    answer.raise_for_status()
    manifest = answer.json()
    digests = [manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]
    return [f"{registry.url}/v2/{repository}/blobs/{digest}" for digest in digests]


def preheat_to_success(stack: LocalStack, image: str) -> None:
    with api_session() as http:
        answer = http.post(f"{stack.api_url}/api/preheat", json={"type": "image", "url": image}, timeout=30)
        task_id = answer.json()["data"]["taskId"]
        deadline = time.monotonic() + WAIT_SECONDS
        status = "RUNNING"
        while time.monotonic() < deadline and status == "RUNNING":
            time.sleep(0.2)
            status = http.get(f"{stack.api_url}/api/preheat/{task_id}", timeout=10).json()["data"]["status"]
    if status != "SUCCESS":
        raise RuntimeError(f"the preheat of {image} ended {status}")


def hits(scheduler: ReferenceScheduler, urls: Sequence[str], node_mode: str) -> int:
    node_id = NODE_IDS[node_mode]
    return sum("finished" in scheduler.holders(node_id(url)).values() for url in urls)


def measure(layers: int, modes: Sequence[str]) -> dict[str, Any]:
    missing = missing_tools(REGISTRY_BINARY, SKOPEO_BINARY)
    if missing:
        raise SystemExit(f"{' and '.join(missing)} not installed (apt-get install docker-registry skopeo)")
    table_: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-node-hits-") as scratch_dir:
        scratch = Path(scratch_dir)
        with RegistryServer(scratch / "registry") as registry:
            repository = push_image(registry, scratch / "layouts", layers, ["v1"])
            urls = node_blob_urls(registry, repository, "v1")
            for preheated in modes:
                with (
                    ReferenceScheduler() as scheduler,
                    LocalStack(
                        target="dragonfly2-scheduler",
                        supernodes=[scheduler.address],
                        cache_dir=scratch / f"unused-{preheated}",
                        extra_env={**QUIET_FUNCTIONS, "PREHEAT_DRAGONFLY2_TASK_IDS": preheated},
                    ) as stack,
                ):
                    preheat_to_success(stack, f"{registry.host}/{repository}:v1")
                    table_[preheated] = {node: hits(scheduler, urls, node) for node in MODES}
    return {"blobs": len(urls), "hits": table_}


def report(layers: int, measured: dict[str, Any]) -> dict[str, Any]:
    blobs = measured["blobs"]
    figures: dict[str, Any] = {}
    for preheated, by_node in measured["hits"].items():
        for node, found in by_node.items():
            same = node == preheated
            figures[f"preheated_{preheated}_node_{node}_hits"] = figure(
                found,
                blobs if same else 0,
                "exactly",
                "blobs",
                label=f"node hits, preheated with {preheated} ids, node on {node} ids",
                detail=f"{found}/{blobs} blobs held finished by a peer"
                + ("" if same else " (the cross case: none expected)"),
            )
    return {
        "benchmark": NAME,
        "command": "python -m bench.node_hits",
        "setup": {"layers": layers, "blobs": blobs, "scope": "single_seed_peer (the service's default)"},
        "hits": measured["hits"],
        "figures": figures,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m bench.{NAME}", description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=3, help="layers of the image (plus its config)")
    parser.add_argument("--modes", default=",".join(MODES), help="task-id modes to preheat in")
    parser.add_argument("--output", type=Path, default=RESULTS / f"{NAME}.json", help="where the JSON goes")
    args = parser.parse_args(argv)
    modes = [part.strip() for part in args.modes.split(",") if part.strip()]
    if set(modes) - set(MODES):
        parser.error(f"--modes: one or both of {', '.join(MODES)}")
    quiet_logs()
    result = report(args.layers, measure(args.layers, modes))
    blobs = result["setup"]["blobs"]
    print(f"node-side hits on the scheduler path, {args.layers}-layer image ({blobs} blobs with its config)")
    print(f"{'preheated with':<16}" + "".join(f"{'node on ' + node:>22}" for node in MODES))
    for preheated, by_node in result["hits"].items():
        print(f"{preheated:<16}" + "".join(f"{f'{by_node[node]}/{blobs}':>22}" for node in MODES))
    print()
    print(table(figure_rows(result["figures"])))
    write_result(args.output, result)
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
