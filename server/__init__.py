"""The embedded model server: a drop-in for tensorflow_model_server (REST + gRPC over one data plane)."""
