"""The deployed template makes ``AllowedRegistries`` an explicit choice (a list of host globs, or
``*`` on purpose); local runs choose ``*`` themselves, so that ``make run`` works out of the box."""

from __future__ import annotations

from pathlib import Path

import pytest

from local.template import Template, TemplateError
from preheat.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def template() -> Template:
    return Template.load(ROOT / "template.yaml")


def test_a_deploy_must_choose_the_allowed_registries(template: Template):
    # No Default: CloudFormation (and sam deploy --guided) asks for a value.
    assert "Default" not in template.raw["Parameters"]["AllowedRegistries"]
    assert template.parameters["AllowedRegistries"].default is None


@pytest.mark.parametrize(
    "value", ["*", "ghcr.io", "ghcr.io,*.example.com", "registry-1.docker.io, *.ecr.aws"]
)
def test_a_list_of_host_globs_or_a_lone_star_is_a_choice(template: Template, value: str):
    template.parameters["AllowedRegistries"].validate(value)


@pytest.mark.parametrize(
    "value", ["", " ", "ghcr.io,*", "*,ghcr.io", "*.*", "https://ghcr.io", "ghcr.io:443"]
)
def test_empty_or_ambiguous_values_are_refused_like_a_deploy_would(template: Template, value: str):
    with pytest.raises(TemplateError, match="AllowedRegistries"):
        template.parameters["AllowedRegistries"].validate(value)


def test_local_runs_choose_every_registry_and_the_worker_reads_it_so(template: Template):
    values = template.parameter_values({"Supernodes": "http://127.0.0.1:8002"})

    assert values["AllowedRegistries"] == "*"
    assert (
        Settings.from_env({"PREHEAT_ALLOWED_REGISTRIES": values["AllowedRegistries"]}).allowed_registries
        == ()
    )
    # A local run may still narrow it, as a deploy would.
    narrowed = template.parameter_values(
        {"Supernodes": "http://127.0.0.1:8002", "AllowedRegistries": "ghcr.io"}
    )
    assert narrowed["AllowedRegistries"] == "ghcr.io"
