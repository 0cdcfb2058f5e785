"""Measurement: the load generators (Locust users, the lean REST and gRPC clients, the open-loop schedule), runs
that settle and their validity, the commands that measure (bench, capacity, tune, the floor) on a shared session,
compare and the results history, and the reports they write."""
