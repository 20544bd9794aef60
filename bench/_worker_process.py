"""The worker's SQS poller in a process of its own, joined to a running local stack, as Lambda runs
the worker on other machines than the API's: ``python -m bench._worker_process STATE_FILE N FD``.

It reads the stack's state file (``LocalStack(state_file=...)``), takes the functions' environment
from it, and polls the worker's queue on ``N`` threads until its standard input closes; then it
lets the batches in hand finish and exits. Meanwhile ``pause`` and ``resume`` lines on standard
input stop and start its pollers. The stack must have been started without its own worker
poller (``LocalStack(skip_pollers=["WorkerFunction"])``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.common import quiet_logs
from local.lambda_runtime import EnvironmentPatch, LambdaRuntime
from local.poller import SqsPoller
from local.template import Template

WORKER = "WorkerFunction"


def main(argv: list[str]) -> int:
    state = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    concurrency = int(argv[1])
    quiet_logs()
    EnvironmentPatch(state["environment"]).apply()
    template = Template.load(state["template"])
    runtime = LambdaRuntime(template, name_prefix=state["name_prefix"])
    [event] = template.functions[WORKER].sqs_events
    queue = state["resources"][event.queue]
    poller = SqsPoller(
        WORKER,
        event,
        queue_url=queue["ref"],
        queue_arn=queue["attributes"]["Arn"],
        invoke=runtime.invoke,
        endpoint_url=state["moto_url"],
        concurrency=concurrency,
    )
    with poller:
        print("ready", file=sys.stderr, flush=True)
        # Until the benchmark closes standard input: "pause" stops the pollers once the batches in
        # hand are done (no request of this process is left half-sent to moto), "resume" starts
        # them again; each is acknowledged, once done, on the file descriptor FD (standard output carries
        # the functions' metrics).
        with open(int(argv[2]), "w", encoding="utf-8") as acknowledgements:
            for line in sys.stdin:
                command = line.strip()
                if command == "pause":
                    poller.stop()
                elif command == "resume":
                    poller.start()
                else:
                    continue
                print(command, file=acknowledgements, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
