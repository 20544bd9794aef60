"""Make the shared layer importable the way Lambda does (/opt/python), for tests and tools."""

import sys
from pathlib import Path

import pytest

LAYER = Path(__file__).parent / "layers" / "shared"
if str(LAYER) not in sys.path:
    sys.path.insert(0, str(LAYER))

# The helpers' asserts explain their failures as the tests' own do (and a helper module the tests
# also load as a plugin, such as tests.support.node_view, is rewritten before either imports it).
pytest.register_assert_rewrite("tests.support")

# Fixtures for every test module, registered here once (a module's own pytest_plugins would register
# them for the whole session anyway, depending on which module was collected first).
pytest_plugins = ["tests.support.fixtures", "tests.support.node_view"]
