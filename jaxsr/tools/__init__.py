"""Command-line tools (`python -m jaxsr.tools.<name>`)."""
