"""The template's security scan (checkov, pinned in .tools/checkov like SAM in .tools/sam): no finding
is left unexplained. Each is fixed, or skipped on its resource with the reason:

    Metadata:
      checkov:
        skip:
          - id: CKV_AWS_116
            comment: Why this check does not apply here

(cfn-lint's rules, including its security ones such as W1011 dynamic references for secrets, run in
``sam validate --lint``: tests/template/test_sam.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKOV = ROOT / ".tools" / "checkov" / "bin" / "checkov"
MIN_REASON_LENGTH = 40  # a reason says why, not just "n/a"


@pytest.fixture(autouse=True)
def _require_checkov() -> None:
    """Fail, never skip: make test installs checkov, and a test that cannot run is a failure."""
    if not CHECKOV.exists():
        pytest.fail(f"checkov not installed at {CHECKOV}: run `make test` (it installs it)", pytrace=False)


def checkov(template: Path) -> dict[str, Any]:
    """checkov's JSON report of ``template``, offline (no policy or mapping download, no update check)."""
    env = dict(os.environ, BC_SKIP_MAPPING="TRUE", CKV_SKIP_PACKAGE_UPDATE_CHECK="true")
    result = subprocess.run(
        [str(CHECKOV), "-f", str(template), "--framework", "cloudformation", "--skip-download", "-o", "json"],
        check=False,
        cwd=template.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode in (0, 1), result.stderr[-3000:]
    report = json.loads(result.stdout)
    if isinstance(report, list):  # one report per framework
        (report,) = report
    assert isinstance(report, dict)
    return report


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    return checkov(ROOT / "template.yaml")


def _where(check: dict[str, Any]) -> str:
    return f"{check['check_id']} on {check['resource']} (template.yaml:{check['file_line_range'][0]})"


def test_the_scan_reads_every_resource(report: dict[str, Any]):
    from local.template import load_template

    summary = report["summary"]
    assert summary["parsing_errors"] == 0
    resources = load_template(ROOT / "template.yaml").resources
    assert summary["resource_count"] == len(resources)
    assert summary["passed"] > 0


def test_no_finding_is_left_unexplained(report: dict[str, Any]):
    failed = report["results"]["failed_checks"]
    assert not failed, (
        "checkov findings: fix them, or skip each on its resource with the reason "
        "(Metadata: checkov: skip: [{id: ..., comment: ...}]):\n"
        + "\n".join(f"  {_where(check)}: {check['check_name']}" for check in failed)
    )


def test_every_skip_carries_its_reason(report: dict[str, Any]):
    skipped = report["results"]["skipped_checks"]
    unexplained = [
        _where(check)
        for check in skipped
        if len((check.get("check_result") or {}).get("suppress_comment") or "") < MIN_REASON_LENGTH
    ]
    assert not unexplained, (
        f"skips without a reason of at least {MIN_REASON_LENGTH} characters: {unexplained}"
    )


def test_the_scan_finds_what_it_is_there_to_find(tmp_path: Path):
    # The same scan over a queue without encryption and a function without a reason to skip: if the
    # scan stopped looking (wrong framework, unreadable template), the template's empty report would lie.
    template = tmp_path / "template.yaml"
    template.write_text(
        "AWSTemplateFormatVersion: '2010-09-09'\n"
        "Transform: AWS::Serverless-2016-10-31\n"
        "Resources:\n"
        "  Queue:\n"
        "    Type: AWS::SQS::Queue\n"
        "  Function:\n"
        "    Type: AWS::Serverless::Function\n"
        "    Metadata:\n"
        "      checkov:\n"
        "        skip:\n"
        "          - id: CKV_AWS_117\n"
        "            comment: a reason long enough to be one, for this test only\n"
        "    Properties:\n"
        "      Runtime: python3.13\n"
        "      Handler: app.handler\n"
        "      InlineCode: 'def handler(e, c): return e'\n"
    )
    report = checkov(template)
    failed = {(c["check_id"], c["resource"].rsplit(".", 1)[-1]) for c in report["results"]["failed_checks"]}
    skipped = {(c["check_id"], c["resource"].rsplit(".", 1)[-1]) for c in report["results"]["skipped_checks"]}
    assert ("CKV_AWS_27", "Queue") in failed
    assert ("CKV_AWS_116", "Function") in failed
    assert skipped == {("CKV_AWS_117", "Function")}
