"""`python -m tests.tunefail TUNE-ARGS...`: `make tune` in which every configuration batching at most 4 requests is
refused at deployment, a stand-in for a configuration the server will not start with (the refusal is raised where
a real one is: bringing the deployment up)."""
from __future__ import annotations

import sys

import deploy.base
from deploy.embedded import DeployError

REFUSAL = "the server refused this configuration (a stand-in for a failed deployment)"
_real_bring_up = deploy.base.bring_up


def _bring_up(spec, deployment, log=print):
    if spec.serving.batching.enabled and spec.serving.batching.max_batch_size == 4:
        raise DeployError(REFUSAL)
    return _real_bring_up(spec, deployment, log)


if __name__ == "__main__":
    deploy.base.bring_up = _bring_up  # what entering a deployment calls
    from loadtests.__main__ import main

    sys.exit(main(["tune", *sys.argv[1:]]))
