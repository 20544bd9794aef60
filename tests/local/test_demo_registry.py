"""The local stack's demo registry: it serves the demo image, and the demo image preheats end to end."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from local.oci_layout import OCI_MANIFEST, OciImage
from local.registry import DEMO_REFERENCE, REGISTRY_BINARY, SKOPEO_BINARY, make_demo_layout
from local.stack import DEFAULT_DEMO_REGISTRY_PORT, LocalStack, stack_from_environ
from tests.local.support import PROJECT_TEMPLATE, wait_for
from tests.support.fixtures import require_tools

# One worker runs the module, so its stack starts once.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("demo-registry")]


@pytest.fixture(scope="module")
def local_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo-stack")


@pytest.fixture(scope="module")
def demo_stack(local_dir: Path) -> Iterator[LocalStack]:
    """The project's template with the reference supernode and a demo registry, all on free ports."""
    require_tools(REGISTRY_BINARY, SKOPEO_BINARY)
    with LocalStack(
        PROJECT_TEMPLATE,
        demo_registry_port=0,
        cache_dir=local_dir / "supernode-cache",
        registry_dir=local_dir / "registry",
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def demo_layout(tmp_path_factory: pytest.TempPathFactory) -> OciImage:
    """The demo image generated again here: its content is deterministic, so these are its digests."""
    return make_demo_layout(tmp_path_factory.mktemp("demo-layout"))


def test_the_registry_serves_the_demo_image(
    demo_stack: LocalStack, demo_layout: OciImage, local_dir: Path
) -> None:
    registry = demo_stack.registry
    assert registry is not None
    assert demo_stack.demo_image == f"{registry.host}/demo/app:v1" == registry.image(DEMO_REFERENCE)

    repository, _, tag = DEMO_REFERENCE.partition(":")
    manifest = requests.get(
        f"{registry.url}/v2/{repository}/manifests/{tag}", headers={"Accept": OCI_MANIFEST}, timeout=5
    )

    assert manifest.status_code == 200
    assert manifest.headers["Content-Type"] == OCI_MANIFEST
    assert manifest.headers["Docker-Content-Digest"] == demo_layout.manifest_digest
    document = manifest.json()
    assert document["config"]["digest"] == demo_layout.config_digest
    assert tuple(layer["digest"] for layer in document["layers"]) == demo_layout.layer_digests
    assert len(demo_layout.layer_digests) >= 2  # "a few small layers"
    assert sum(layer["size"] for layer in document["layers"]) < 1024 * 1024
    # The registry's data lives in the directory the stack was given, not in a temporary one.
    assert registry.root == local_dir / "registry"
    assert (local_dir / "registry" / "data").is_dir()


def test_state_names_the_registry_and_the_demo_image(demo_stack: LocalStack) -> None:
    assert demo_stack.registry is not None
    state = demo_stack.state()
    assert state["demo_registry"] == demo_stack.registry.host
    assert state["demo_image"] == demo_stack.demo_image
    json.dumps(state)  # stack.json holds it


def test_preheating_the_demo_image_caches_its_config_and_every_layer(
    demo_stack: LocalStack, demo_layout: OciImage
) -> None:
    api = demo_stack.api_url
    submitted = requests.post(
        f"{api}/api/preheat", json={"type": "image", "url": demo_stack.demo_image}, timeout=10
    ).json()
    assert submitted["code"] == 200, submitted
    task_id = submitted["data"]["taskId"]

    def finished() -> dict[str, Any] | None:
        status = requests.get(f"{api}/api/preheat/{task_id}", timeout=10).json()
        assert status["code"] == 200, status
        return None if status["data"]["status"] == "RUNNING" else status["data"]

    data = wait_for(finished, timeout=30, interval=0.2)

    assert data["status"] == "SUCCESS", data
    assert data["url"] == demo_stack.demo_image
    total = len(demo_layout.blob_digests)
    assert data["layers"] == {"total": total, "succeeded": total, "failed": 0, "pending": 0}
    assert demo_stack.supernode is not None
    assert set(demo_layout.blob_digests) <= demo_stack.supernode.cached_digests()


# -- stack_from_environ: what `make run` asks for ------------------------------------------------


def test_make_run_asks_for_the_demo_registry_on_5001_by_default(tmp_path: Path) -> None:
    stack = stack_from_environ({"PREHEAT_LOCAL_DIR": str(tmp_path)})
    assert stack._demo_registry_port == DEFAULT_DEMO_REGISTRY_PORT == 5001
    assert stack._registry_dir == tmp_path / "registry"


def test_the_demo_registry_port_comes_from_the_environment() -> None:
    assert stack_from_environ({"PREHEAT_DEMO_REGISTRY_PORT": "0"})._demo_registry_port == 0
    assert stack_from_environ({"PREHEAT_DEMO_REGISTRY_PORT": "5055"})._demo_registry_port == 5055
    with pytest.raises(SystemExit, match="PREHEAT_DEMO_REGISTRY_PORT must be a port number"):
        stack_from_environ({"PREHEAT_DEMO_REGISTRY_PORT": "five"})


@pytest.mark.parametrize("value", ["0", "false", "off"])
def test_preheat_demo_registry_0_turns_it_off(value: str) -> None:
    environ = {"PREHEAT_DEMO_REGISTRY": value, "PREHEAT_DEMO_REGISTRY_PORT": "5055"}
    assert stack_from_environ(environ)._demo_registry_port is None


def test_the_python_api_starts_no_registry_unless_asked() -> None:
    stack = LocalStack(PROJECT_TEMPLATE)
    assert stack._demo_registry_port is None
    assert (stack.registry, stack.demo_image) == (None, None)
