"""`tfsb`: the one command line of the harness (tfsb/cli.py); each subcommand is a module's own entry point."""
