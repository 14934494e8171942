"""Subcommands of the `voxloop` command line, one module each."""
