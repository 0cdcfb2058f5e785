"""Deploy: a spec's model served on a backend (the embedded server as a child process, or a Docker container built
from dockerfiles/), its configs and flags, readiness, and compose and Kubernetes manifests."""
