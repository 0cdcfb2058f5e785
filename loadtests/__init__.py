"""Load tests: Locust users for REST and gRPC, the bench sweep, and its report."""
