"""`python -m pipeline.cli` runs the `shop3d` command."""

from pipeline.cli.main import main

raise SystemExit(main())
