"""`python -m exporter inspect DIR`: what a SavedModel expects, like `saved_model_cli show --all`, plus hints."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from server.model import Signature, TensorSpec, signatures_of
from server.repository import discover_versions
from server.tensors.dtypes import DType, dtype_name
from spec.errors import HarnessError


class InspectError(HarnessError):
    """The directory is not a readable SavedModel."""


def read_meta_graphs(directory: Path) -> list:
    """All MetaGraphDefs in DIR/saved_model.pb (parsed with protobuf only; no session)."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    path = Path(directory) / "saved_model.pb"
    text_path = Path(directory) / "saved_model.pbtxt"
    if not path.is_file() and text_path.is_file():  # TF1 exports may write the text form; TF loads either
        from google.protobuf import text_format

        saved_model = saved_model_pb2.SavedModel()
        try:
            text_format.Parse(text_path.read_text(encoding="utf-8", errors="replace"), saved_model)
        except text_format.ParseError as exc:
            raise InspectError(f"{text_path}: not a SavedModel text protobuf ({exc})") from None
        return list(saved_model.meta_graphs)
    if not path.is_file():
        hint = ""

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


def example_features(meta_graph) -> list[str]:
    """The feature keys the graph's ParseExample ops read (what a classify/regress tf.Example must hold)."""
    graph = meta_graph.graph_def
    nodes = {node.name: node for node in graph.node}
    for function in graph.library.function:
        nodes.update({node.name: node for node in function.node_def})
    keys: list[str] = []

    def constant_strings(name: str) -> list[str]:
        node = nodes.get(name.split(":")[0].lstrip("^"))
        if node is None or node.op != "Const":
            return []
        tensor = node.attr["value"].tensor
        return [v.decode("utf-8", "replace") for v in tensor.string_val]

    for node in list(nodes.values()):
        if node.op == "ParseExample":  # dense keys are Const inputs after serialized and names
            count = node.attr["Ndense"].i
            sparse = node.attr["Nsparse"].i
            for name in node.input[2 + sparse:2 + sparse + count]:
                keys += constant_strings(name)
        elif node.op == "ParseExampleV2" and len(node.input) >= 5:
            keys += constant_strings(node.input[3]) + constant_strings(node.input[2])  # dense_keys, sparse_keys
    return sorted(set(keys))


def _hint(signature: Signature, features: Sequence[str] = ()) -> str:
    inputs = list(signature.inputs.values())
    named = "" if signature.name == "serving_default" else f"\"signature_name\": \"{signature.name}\", "
    if signature.method_name.endswith(("classify", "regress")) and [i.alias for i in inputs] == ["inputs"]:
        verb = "classify" if signature.method_name.endswith("classify") else "regress"
        example = ", ".join(f'"{f}": {{"b64": "<base64 JPEG>"}}' if f.endswith("encoded") else f'"{f}": <value>'
                            for f in features) or "feature: value"
        return (f"send tf.Examples: REST POST :{verb} {{{named}\"examples\": [{{{example}}}]}}, gRPC "
                + verb.capitalize() + "(...)" + (f" with feature(s) {', '.join(features)}" if features else ""))
    if len(inputs) == 1 and inputs[0].dtype == DType.STRING:
        return (f"send encoded bytes: REST {{{named}\"instances\": "
                f"[{{\"b64\": \"<base64>\"}}]}}; gRPC inputs['{inputs[0].alias}'] = DT_STRING tensor of the bytes"
                + (f", model_spec.signature_name = \"{signature.name}\"" if named else ""))
    if len(inputs) == 1 and inputs[0].shape is not None and len(inputs[0].shape) == 4:
        _, height, width, channels = inputs[0].shape
        return (f"send {dtype_name(inputs[0].dtype)} images N x {height} x {width} x {channels}: REST "
                f"{{{named}\"instances\": [<HxWxC nested list>]}}; gRPC inputs['{inputs[0].alias}'] as a TensorProto"
                + (f", model_spec.signature_name = \"{signature.name}\"" if named else ""))
    names = ", ".join(f"{i.alias} ({dtype_name(i.dtype)})" for i in inputs) or "nothing"
    return f"send {names}"


def _expected_input_lines(directory: Path) -> list[str]:
    """What this harness's export expects of its tensor input (from its provenance), or nothing."""
    import json

    path = Path(directory) / "assets.extra" / "provenance.json"
    try:
        expected = json.loads(path.read_text(encoding="utf-8")).get("input") if path.is_file() else None
    except (OSError, ValueError):
        return []
    if not expected:
        return []
    low, high = expected["value_range"]
    return ["Exported by tfserve-bench. The tensor signature expects float32 N x "
            f"{expected['height']} x {expected['width']} x {expected['channels']}: pixels (0..255) resized "
            f"({expected['resize_method']}), then {expected['formula']}, so values in [{low:g}, {high:g}]. "
            "The image signatures decode, resize and preprocess in the graph.", ""]


def describe(directory: Path) -> str:
    """A `saved_model_cli show --all`-style summary of every signature with a 'how to call it' hint."""
    lines = _expected_input_lines(directory)
    for meta_graph in read_meta_graphs(directory):
        features = example_features(meta_graph)
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
                lines.append(f"  How to call it: {_hint(signature, features)}")
        lines.append("")
    return "\n".join(lines)
