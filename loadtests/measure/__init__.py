"""Measuring: a run and a sweep of runs (Locust in a child process), the session around them (deploy,
provenance, run directories, history), the answer checks before a run, the capacity search, the floor and the
tune search space."""
