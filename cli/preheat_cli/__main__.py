"""``python -m preheat_cli``: the same command as the installed ``preheat`` script."""

from preheat_cli.main import main

raise SystemExit(main())
