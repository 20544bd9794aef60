"""``python -m local.invoke FUNCTION EVENT_FILE``: the Docker-free ``sam local invoke``.

Runs one function of the template once, in this process, against the AWS resources of the running
local stack (``make run``): its environment comes from the stack's ``.local/stack.json``, or, without
one, from ``AWS_ENDPOINT_URL`` (the resources are then looked up there by their deterministic names).
A template variable set in the shell wins, as in the stack. The result is printed as JSON on stdout;
the handler's own logs go to stderr so the output can be piped (``| jq``). ``EVENT_FILE`` may be ``-``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from local.aws import DEFAULT_NAME_PREFIX, LOCAL_ACCOUNT_ID, LOCAL_REGION, lookup
from local.lambda_runtime import (
    EnvironmentPatch,
    LambdaRuntime,
    local_aws_environment,
    template_variable_names,
    union_environment,
)
from local.stack import DEFAULT_LOCAL_DIR, DEFAULT_TEMPLATE, STATE_FILE_NAME, configure_logging
from local.template import Resolver, Template

log = logging.getLogger("local.invoke")


class NoLocalStack(RuntimeError):
    """Neither a state file nor AWS_ENDPOINT_URL says where the local AWS endpoint is."""


def default_state_file(environ: Mapping[str, str]) -> Path:
    return Path(environ.get("PREHEAT_LOCAL_DIR") or DEFAULT_LOCAL_DIR) / STATE_FILE_NAME


def invoke_environment(
    template: Template, state: Mapping[str, Any] | None, environ: Mapping[str, str]
) -> tuple[dict[str, str], str]:
    """The functions' environment and the resources' name prefix, for joining a running stack."""
    overrides = {k: environ[k] for k in template_variable_names(template) if k in environ}
    endpoint = environ.get("AWS_ENDPOINT_URL")
    if state is not None:
        env = {**state["environment"], **overrides}
        if endpoint:
            env["AWS_ENDPOINT_URL"] = endpoint
        return env, str(state.get("name_prefix", DEFAULT_NAME_PREFIX))
    if not endpoint:
        raise NoLocalStack(
            "no local stack state file and no AWS_ENDPOINT_URL: start the stack (make run) first"
        )
    name_prefix = environ.get("PREHEAT_LOCAL_NAME_PREFIX", DEFAULT_NAME_PREFIX)
    parameters = template.parameter_values()
    runtime = LambdaRuntime(template, name_prefix=name_prefix)
    resources = {**lookup(template, endpoint, name_prefix=name_prefix), **runtime.function_resources()}
    resolver = Resolver(template, parameters, resources, LOCAL_REGION, LOCAL_ACCOUNT_ID, name_prefix)
    return {
        **local_aws_environment(endpoint),
        **union_environment(template, resolver, overrides),
    }, name_prefix


def invoke(
    function_logical_id: str,
    event: Mapping[str, Any],
    *,
    template: str | Path | Template = DEFAULT_TEMPLATE,
    state_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Any:
    """Invoke one function once against the running local stack; ``os.environ`` is restored after."""
    environ = os.environ if environ is None else environ
    template = template if isinstance(template, Template) else Template.load(template)
    state_file = default_state_file(environ) if state_file is None else state_file
    state = json.loads(state_file.read_text(encoding="utf-8")) if state_file.is_file() else None
    env, name_prefix = invoke_environment(template, state, dict(environ))
    patch = EnvironmentPatch(env)
    patch.apply()
    try:
        return LambdaRuntime(template, name_prefix=name_prefix).invoke(function_logical_id, event)
    finally:
        patch.restore()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.invoke", description=__doc__.split("\n\n")[0])
    parser.add_argument("function", help="logical id of the function in template.yaml, e.g. StatusFunction")
    parser.add_argument("event_file", help="JSON event file, or - for stdin")
    parser.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE)
    args = parser.parse_args(argv)
    configure_logging(os.environ.get("PREHEAT_LOCAL_LOG_LEVEL", "WARNING").upper())

    template = Template.load(args.template)
    if args.function not in template.functions:
        print(
            f"unknown function {args.function!r}; the template has: {', '.join(template.functions)}",
            file=sys.stderr,
        )
        return 2
    raw = sys.stdin.read() if args.event_file == "-" else Path(args.event_file).read_text(encoding="utf-8")
    event = json.loads(raw)
    try:
        # Handler output (powertools logs) to stderr; stdout carries only the result.
        with contextlib.redirect_stdout(sys.stderr):
            result = invoke(args.function, event, template=template)
    except NoLocalStack as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except Exception as exc:
        # The shape Lambda reports a failed invocation with.
        error = {
            "errorMessage": str(exc),
            "errorType": type(exc).__name__,
            "stackTrace": traceback.format_tb(exc.__traceback__),
        }
        print(json.dumps(error))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
