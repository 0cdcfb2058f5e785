"""`python -m deploy up|down|status|logs --spec FILE`: the model of a spec, served on its backend."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from deploy.containers import build_plan, remove_everything
from deploy.deployment import already_serving, bring_up, deployment_for, preflight
from deploy.embedded import STATE_DIR
from deploy.images import prepare_context
from deploy.manifests import compose, kubernetes
from exporter.export import ensure_exported
from spec.errors import program, run_command
from spec.loader import load_spec


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=program("python -m deploy"), description="Serve a spec's model over REST and gRPC.")
    parser.add_argument("command", choices=["up", "down", "status", "logs", "compose", "k8s", "clean"],
                        help="up: export if needed, start, wait until AVAILABLE; down: stop; status; logs; "
                             "compose / k8s: render docker-compose.yaml / Kubernetes manifests into --out; "
                             "clean: remove every container and image this tool created (docker)")
    parser.add_argument("--out", type=Path, help="compose / k8s: output directory (default .run/<model>-<port>/)")
    parser.add_argument("--spec", required=True, type=Path, help="the model spec (YAML)")
    parser.add_argument("--backend", choices=["embedded", "docker"], help="override serving.backend")
    parser.add_argument("--image", choices=["cpu", "gpu", "cpu-optimized", "embedded"], help="override serving.image")
    return parser


def render(spec, kind: str, out: Path) -> Path:
    """Write docker-compose.yaml (with its build context) or k8s.yaml for the spec into `out`."""
    import yaml

    ensure_exported(spec)
    plan = build_plan(spec)
    out.mkdir(parents=True, exist_ok=True)
    if kind == "compose":
        prepare_context(spec, spec.serving.image, out / "context", plan.versions)
        path = out / "docker-compose.yaml"
        path.write_text(yaml.safe_dump(compose(spec, plan.tag, "./context", plan.target, plan.buildargs),
                                       sort_keys=False))
    else:
        path = out / "k8s.yaml"
        image = spec.serving.kubernetes.image or plan.tag
        path.write_text(yaml.safe_dump_all(kubernetes(spec, image), sort_keys=False))
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:

    args = _parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return run_command(lambda: _command(args))


def _command(args: argparse.Namespace) -> int:

    spec = load_spec(args.spec)
    if args.image:
        spec = spec.model_copy(update={"serving": spec.serving.model_copy(update={"image": args.image})})
    deployment = deployment_for(spec, args.backend)
    if args.command == "up":
        preflight(spec, deployment)  # the engine and the ports, before minutes of export or training
        ensure_exported(spec)
        bring_up(spec, deployment)
        endpoints = deployment.endpoints
        for served in spec.served:
            print(f"try: curl {endpoints.rest_url}/v1/models/{served.name}")
        print(f"stop: make down SPEC={args.spec}")
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
        for served in spec.served[1:]:
            also = already_serving(dataclasses.replace(endpoints, model=served.name))
            serving = serving and also
            print(f"  also serves {served.name}: {'AVAILABLE' if also else 'not serving'}")
        return 0 if serving else 1
    elif args.command in ("compose", "k8s"):
        out = args.out or STATE_DIR / f"{spec.name}-{spec.serving.rest_port}" / args.command
        print(f"wrote {render(spec, args.command, out)}")
    elif args.command == "clean":
        print(remove_everything())
    else:
        sys.stdout.write(deployment.logs())
    return 0


if __name__ == "__main__":
    sys.exit(main())
