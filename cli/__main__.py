"""`python -m cli` runs the `splitter` command line."""

from cli.main import app

app()
