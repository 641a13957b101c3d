"""``python -m aef``: the ``aef`` command line."""

from .pipelines.cli import main

raise SystemExit(main())
