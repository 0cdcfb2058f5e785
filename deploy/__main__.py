"""`python -m deploy up|down|status|logs --spec FILE`: the model of a spec, served on its backend."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deploy", description="Serve a spec's model over REST and gRPC.")
    parser.add_argument("command", choices=["up", "down", "status", "logs"],
                        help="up: export if needed, start, wait until AVAILABLE; down: stop; status; logs")
    parser.add_argument("--spec", required=True, type=Path, help="the model spec (YAML)")
    parser.add_argument("--backend", choices=["embedded", "docker"], help="override serving.backend")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from deploy.deployment import already_serving, bring_up, deployment_for
    from deploy.embedded import DeployError
    from deploy.spec import SpecError, load_spec
    from deploy.waiting import NotReady

    try:
        spec = load_spec(args.spec)
        deployment = deployment_for(spec, args.backend)
        if args.command == "up":
            from exporter.export import ExportError, ensure_exported
            try:
                ensure_exported(spec)
            except ExportError as exc:
                raise DeployError(str(exc)) from None
            bring_up(spec, deployment)
            endpoints = deployment.endpoints
            print(f"try: curl {endpoints.status_url}\nstop: make down SPEC={args.spec}")
        elif args.command == "down":
            stopped = deployment.stop()
            print(f"stopped {spec.name} ({deployment.backend})" if stopped else
                  f"nothing to stop: no {deployment.backend} deployment of {spec.name} is running")
        elif args.command == "status":
            endpoints = deployment.endpoints
            running = deployment.alive() is None
            serving = already_serving(endpoints)
            print(f"{spec.name} ({deployment.backend}): {'running' if running else 'not running'}; "
                  f"{'AVAILABLE' if serving else 'not serving'} at {endpoints.rest_url} / {endpoints.grpc_target}")
            return 0 if serving else 1
        else:
            sys.stdout.write(deployment.logs())
    except (SpecError, DeployError, NotReady) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; what was started has been stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
