"""`python -m daemon.cli`: the same as the `i2vd` command."""

from daemon.cli.main import main

raise SystemExit(main())
