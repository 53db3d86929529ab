"""The command line: click commands, each a thin layer over the Python API (`edgecompile.cli.main:main`)."""
