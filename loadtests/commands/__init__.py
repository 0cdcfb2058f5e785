"""The commands: each deploys through a session, measures, analyzes and hands its results to report/; the
only place where the rooms meet. `python -m loadtests <command>` and `tfsb <command>` dispatch here."""
