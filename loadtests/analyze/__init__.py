"""What the measured samples mean: validity and settling, the folding of repeats, the machine the run shared,
compare's intervals and verdicts, and the results database. Nothing here deploys or sends a request."""
