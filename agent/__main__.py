"""`python -m agent` is the same as the `charles` console script."""

from agent.cli import main

raise SystemExit(main())
