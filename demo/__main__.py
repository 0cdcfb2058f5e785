"""`python -m demo --spec F [--port 8080]` (make demo): the page on http://127.0.0.1:8080.

Uses the spec's deployment when it is already up (make deploy); otherwise starts it on the spec's backend
and stops it again when the page is stopped (Ctrl-C).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from demo.app import DemoConfig, DemoServer
from demo.client import ModelClient
from deploy.base import DeployError
from deploy.deployment import DeployError, deployment_for, preflight
from exporter.export import ensure_exported, read_provenance, spec_labels
from spec.errors import UsageError, program, run_command
from spec.loader import load_spec


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=program("python -m demo"), description="Try the deployed model on a photo.")
    parser.add_argument("--spec", required=True, type=Path, help="the model spec (YAML)")
    parser.add_argument("--host", default="127.0.0.1", help="address the page listens on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="the page's port (default 8080)")
    parser.add_argument("--backend", choices=["embedded", "docker"], help="override serving.backend")
    parser.add_argument("--max-upload-mb", type=float, default=10.0, help="largest image accepted (default 10 MB)")
    return parser


def expects_text(version_dir: Path) -> str:
    """'32x32x1, x / 255, values in [0, 1]' from the export's provenance; '' for a model we did not export."""

    expected = (read_provenance(version_dir) or {}).get("input")
    if not expected:
        return ""
    low, high = expected["value_range"]
    return (f"{expected['height']}x{expected['width']}x{expected['channels']}, {expected['formula']}, "
            f"values in [{low:g}, {high:g}]")


def main(argv: Optional[Sequence[str]] = None) -> int:

    args = _parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return run_command(lambda: _serve(args), interrupted="demo: stopped")


def _port_free(host: str, port: int) -> None:
    """DeployError now when the demo page's own port is taken (not after an export)."""
    import socket

    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise DeployError(f"--port {port}: cannot listen on {host}:{port} ({exc.strerror}); "
                              "choose another port with PORT=...") from None


def _serve(args: argparse.Namespace) -> int:

    spec = load_spec(args.spec)
    if args.max_upload_mb <= 0:
        raise UsageError(f"--max-upload-mb must be positive (got {args.max_upload_mb:g})")
    deployment = deployment_for(spec, args.backend)
    preflight(spec, deployment)  # the engine and the ports, before minutes of export or training
    _port_free(args.host, args.port)
    version_dir = ensure_exported(spec)
    with deployment:  # serves the model (or uses the one already served) and stops what it started

        endpoints = deployment.endpoints
        client = ModelClient(endpoints.rest_url, endpoints.grpc_target, spec.name)
        config = DemoConfig(model=spec.name, labels=tuple(spec_labels(spec) or ()), top_k=spec.export.top_k,
                            max_upload_bytes=int(args.max_upload_mb * 1e6),
                            deploy_hint=f"Start it with: make deploy SPEC={args.spec}",
                            expects=expects_text(version_dir))
        try:
            server = DemoServer((args.host, args.port), client, config)
        except OSError as exc:
            raise DeployError(f"--port {args.port}: cannot listen on {args.host}:{args.port} ({exc.strerror}); "
                              "choose another port with PORT=...") from None
        print(f"demo: http://{args.host}:{server.server_address[1]}/  (model {spec.name} at {endpoints.rest_url} "
              f"and {endpoints.grpc_target}; Ctrl-C stops)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("demo: stopped", file=sys.stderr)
        finally:
            server.server_close()
            client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
