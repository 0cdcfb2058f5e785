"""Deploy: the spec schema, the embedded model server, and (docker) image and container management."""
