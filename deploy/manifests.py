"""Beyond one `docker run`: a docker-compose.yaml and Kubernetes manifests rendered from a spec.

Both use the image `make deploy BACKEND=docker` builds (dockerfiles/Dockerfile.<serving.image>), so what runs
under compose or Kubernetes is exactly what was benchmarked.
"""
from __future__ import annotations

from typing import Any

from deploy.images import CONTAINER_PORTS, HARDENING, TMP_SIZE_MB
from spec.schema import Spec

# the same readiness test as the images' HEALTHCHECK: REST model status lists an AVAILABLE version
STATUS_PROBE = ("exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'GET /v1/models/{model} HTTP/1.0\\r\\n\\r\\n' >&3 "
                "&& grep -q AVAILABLE <&3")


def compose(spec: Spec, tag: str, context: str, target: str | None, buildargs: dict[str, str]) -> dict[str, Any]:
    """A compose file (as data) building and running the spec's model image."""
    serving = spec.serving
    service: dict[str, Any] = {
        "build": {"context": context, "dockerfile": "Dockerfile", "args": dict(buildargs)},
        "image": tag,
        "environment": {"MODEL_NAME": spec.name},
        "labels": {"tfserve-bench.managed": "true", "tfserve-bench.model": spec.name},
        "restart": "unless-stopped",
        "stop_grace_period": "30s",
        # the same hardening as `make deploy BACKEND=docker` (deploy.images.HARDENING)
        "read_only": HARDENING["read_only"],
        "tmpfs": [f"{path}:{options}" for path, options in HARDENING["tmpfs"].items()],
        "cap_drop": list(HARDENING["cap_drop"]),
        "security_opt": [f"{option}:true" for option in HARDENING["security_opt"]],
    }
    if target:
        service["build"]["target"] = target
    if serving.network == "host":
        service["network_mode"] = "host"
        service["command"] = [f"--port={serving.grpc_port}", f"--rest_api_port={serving.rest_port}"]
        service["environment"].update({"REST_PORT": str(serving.rest_port), "SERVER_HOST": serving.host})
    else:
        service["ports"] = [f"{serving.host}:{serving.grpc_port}:{CONTAINER_PORTS[0]}",
                            f"{serving.host}:{serving.rest_port}:{CONTAINER_PORTS[1]}"]
    if serving.image == "gpu":
        service["deploy"] = {"resources": {"reservations": {"devices": [
            {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]}}}
    return {"name": f"tfsb-{spec.name.lower()}", "services": {spec.name.lower(): service}}


def kubernetes(spec: Spec, image: str) -> list[dict[str, Any]]:
    """Deployment (readiness on model status), Service (8500, 8501) and HorizontalPodAutoscaler."""
    k8s = spec.serving.kubernetes
    name = spec.name.lower().replace("_", "-").replace(".", "-")
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "tfserve-bench"}
    limits: dict[str, str] = {"cpu": k8s.cpu, "memory": k8s.memory}
    if spec.serving.image == "gpu":
        limits["nvidia.com/gpu"] = "1"
    def probe_command() -> list[str]:
        return ["/bin/bash", "-c", STATUS_PROBE.format(port=CONTAINER_PORTS[1], model=spec.name)]
    container = {
        "name": "tensorflow-serving",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "env": [{"name": "MODEL_NAME", "value": spec.name}],
        "ports": [{"name": "grpc", "containerPort": CONTAINER_PORTS[0], "protocol": "TCP"},
                  {"name": "rest", "containerPort": CONTAINER_PORTS[1], "protocol": "TCP"}],
        "readinessProbe": {"exec": {"command": probe_command()}, "initialDelaySeconds": 5, "periodSeconds": 5,
                           "timeoutSeconds": 4, "failureThreshold": 3},
        "livenessProbe": {"tcpSocket": {"port": "grpc"}, "initialDelaySeconds": 30, "periodSeconds": 10,
                          "failureThreshold": 6},
        "startupProbe": {"exec": {"command": probe_command()}, "periodSeconds": 5,
                         "failureThreshold": max(1, int(spec.serving.readiness_timeout_s // 5))},
        "resources": {"requests": {"cpu": k8s.cpu, "memory": k8s.memory}, "limits": limits},
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "allowPrivilegeEscalation": False,
                            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": dict(labels)},
        "spec": {"replicas": k8s.replicas, "selector": {"matchLabels": dict(labels)},
                 "template": {"metadata": {"labels": dict(labels)},
                              "spec": {"containers": [container], "terminationGracePeriodSeconds": 30,
                                       "volumes": [{"name": "tmp", "emptyDir": {"medium": "Memory",
                                                                                "sizeLimit": f"{TMP_SIZE_MB}Mi"}}]}}},
    }
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "labels": dict(labels)},
        "spec": {"selector": dict(labels), "ports": [
            {"name": "grpc", "port": CONTAINER_PORTS[0], "targetPort": "grpc", "protocol": "TCP"},
            {"name": "rest", "port": CONTAINER_PORTS[1], "targetPort": "rest", "protocol": "TCP"}]},
    }
    autoscaler = {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "labels": dict(labels)},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                 "minReplicas": k8s.replicas, "maxReplicas": max(k8s.max_replicas, k8s.replicas),
                 "metrics": [{"type": "Resource", "resource": {
                     "name": "cpu", "target": {"type": "Utilization", "averageUtilization": k8s.target_cpu_percent}}}]},
    }
    return [deployment, service, autoscaler]
