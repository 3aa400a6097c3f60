"""The `splitter` command line: a thin typer shell over the library."""
