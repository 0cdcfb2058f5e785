"""`python -m exporter inspect DIR`: what a SavedModel expects, like `saved_model_cli show --all`, plus hints."""
from __future__ import annotations

from pathlib import Path

from server.model import Signature, TensorSpec, signatures_of
from server.tensors.dtypes import DType, dtype_name
from spec.errors import HarnessError


class InspectError(HarnessError):
    """The directory is not a readable SavedModel."""


def read_meta_graphs(directory: Path) -> list:
    """All MetaGraphDefs in DIR/saved_model.pb (parsed with protobuf only; no session)."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    path = Path(directory) / "saved_model.pb"
    if not path.is_file():
        hint = ""
        from server.repository import discover_versions

        versions = discover_versions(str(directory)) or {}
        if versions:
            hint = f"; it has version directories: try {versions[max(versions)]}"
        raise InspectError(f"{directory}: no saved_model.pb here{hint}")
    saved_model = saved_model_pb2.SavedModel()
    try:
        saved_model.ParseFromString(path.read_bytes())
    except DecodeError as exc:
        raise InspectError(f"{path}: not a SavedModel protobuf ({exc})") from None
    return list(saved_model.meta_graphs)


def _shape(spec: TensorSpec) -> str:
    if spec.shape is None:
        return "unknown_rank"
    return "(" + ", ".join(str(d) for d in spec.shape) + ")"


def _tensor_lines(kind: str, spec: TensorSpec) -> list[str]:
    return [f"    {kind}['{spec.alias}'] tensor_info:", f"        dtype: {dtype_name(spec.dtype)}",
            f"        shape: {_shape(spec)}", f"        name: {spec.name}"]


def _hint(signature: Signature) -> str:
    inputs = list(signature.inputs.values())
    if signature.method_name.endswith(("classify", "regress")) and [i.alias for i in inputs] == ["inputs"]:
        verb = "classify" if signature.method_name.endswith("classify") else "regress"
        return (f"send tf.Examples: REST POST :{verb} {{\"signature_name\": \"{signature.name}\", "
                "\"examples\": [{feature: value}]}, gRPC " + verb.capitalize() + "(...)")
    if len(inputs) == 1 and inputs[0].dtype == DType.STRING:
        return (f"send encoded bytes: REST {{\"signature_name\": \"{signature.name}\", \"instances\": "
                f"[{{\"b64\": \"<base64>\"}}]}}; gRPC inputs['{inputs[0].alias}'] = DT_STRING tensor of the bytes")
    if len(inputs) == 1 and inputs[0].shape is not None and len(inputs[0].shape) == 4:
        _, height, width, channels = inputs[0].shape
        return (f"send {dtype_name(inputs[0].dtype)} images N x {height} x {width} x {channels}: REST "
                f"{{\"instances\": [<HxWxC nested list>]}}; gRPC inputs['{inputs[0].alias}'] as a TensorProto")
    names = ", ".join(f"{i.alias} ({dtype_name(i.dtype)})" for i in inputs) or "nothing"
    return f"send {names}"


def describe(directory: Path) -> str:
    """A `saved_model_cli show --all`-style summary of every signature with a 'how to call it' hint."""
    lines = []
    for meta_graph in read_meta_graphs(directory):
        tags = ", ".join(repr(t) for t in meta_graph.meta_info_def.tags)
        lines.append(f"MetaGraphDef with tag-set: {tags} contains the following SignatureDefs:")
        for name, signature in sorted(signatures_of(meta_graph).items()):
            lines += ["", f"signature_def['{name}']:",
                      "  The given SavedModel SignatureDef contains the following input(s):"]
            for spec in signature.inputs.values():
                lines += _tensor_lines("inputs", spec)
            lines.append("  The given SavedModel SignatureDef contains the following output(s):")
            for spec in signature.outputs.values():
                lines += _tensor_lines("outputs", spec)
            lines.append(f"  Method name is: {signature.method_name}")
            if not name.startswith("__"):
                lines.append(f"  How to call it: {_hint(signature)}")
        lines.append("")
    return "\n".join(lines)
