"""``preheat``: a command-line client of the Preheat API (submit, follow and check preheat tasks).

Run it as ``preheat`` (installed into the virtual environment by ``make run`` and ``make test``) or as
``python -m preheat_cli``.
"""
