"""The completion notice through the Dragonfly 2 scheduler path, as ``python -m bench`` runs it.

    .venv/bin/python -m bench.completion_notice_scheduler [--delays 5,40] [--runs 3] [--long-runs 1]

``bench.completion_notice --target scheduler`` with these defaults (its notes say what is measured:
from the last required scheduler peer finishing, ``ReferenceScheduler.finished_at``, to the status
answer showing SUCCESS); a module of its own so that ``make bench`` runs the scheduler path beside
the supernode's. All runs go at once, about a minute. ``make bench`` leaves out the 3-minute blob
(``bench.completion_notice`` keeps it for the supernode path) to stay within 15 minutes: add it
with ``--delays 5,40,180`` (3.5 minutes).

Results go to ``bench/results/completion_notice_scheduler.json``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from bench import completion_notice

DEFAULTS = ["--delays", "5,40", "--runs", "3", "--long-runs", "1"]
QUICK_ARGS = ["--delays", "3", "--runs", "3"]


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    # The defaults first: an option given again replaces its default (argparse keeps the last).
    return completion_notice.main(["--target", "scheduler", *DEFAULTS, *given])


if __name__ == "__main__":
    raise SystemExit(main())
