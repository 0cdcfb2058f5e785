"""make demo: a page to try the deployed model on a photo, over REST and gRPC side by side."""
