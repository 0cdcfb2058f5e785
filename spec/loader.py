"""Load a spec file: YAML with line numbers -> a frozen, validated `Spec`, every problem as `file:line` lines."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ValidationError

from spec.errors import SpecError, UsageError
from spec.results import TuneResult
from spec.schema import SOURCE_KINDS, KerasFileSource, SavedModelSource, Spec
from spec.tuning import apply_config
from spec.yamlsource import YamlSourceError, load_yaml_with_lines


def _describe(error: dict[str, Any], model: type[BaseModel]) -> str:
    kind = error["type"]
    loc = error["loc"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        return f"unknown key '{loc[-1]}'" + (f"; allowed keys: {', '.join(allowed)}" if allowed else "")
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        return (f"kind '{error['ctx']['tag']}' is not a model source; allowed kinds: "
                f"{error['ctx']['expected_tags'].replace(chr(39), '')}")
    if kind == "union_tag_not_found":
        return f"'kind' is missing; allowed kinds: {', '.join(SOURCE_KINDS)}"
    message = error["msg"]
    return message.removeprefix("Value error, ")


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Optional, Union, tuple and list)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in getattr(annotation, "__args__", ()) or ():
        found += _models_in(arg)
    return found


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Keys allowed at `loc` (pydantic's error location, union tags included)."""
    candidates: list[type[BaseModel]] = [model]
    for part in loc:
        if isinstance(part, int):
            continue
        tagged = [m for m in candidates if "kind" in m.model_fields
                  and part in getattr(m.model_fields["kind"].annotation, "__args__", ())]
        if tagged:
            candidates = tagged
            continue
        fields = [m.model_fields[part] for m in candidates if part in m.model_fields]
        if not fields:
            return []
        candidates = _models_in(fields[0].annotation)
    return sorted(candidates[0].model_fields) if len(candidates) == 1 else []


def _check_files(spec: Spec) -> list[tuple[tuple[Any, ...], str]]:
    problems = []
    source = spec.model.source
    if isinstance(source, KerasFileSource):
        path = spec.resolve(source.path)
        if not path.is_file():
            problems.append((("model", "source", "path"), f"model file {path} does not exist; give a .keras or .h5 file"))
        elif path.suffix not in (".keras", ".h5"):
            problems.append((("model", "source", "path"), f"{path.name} is not a .keras or .h5 file"))
    if isinstance(source, SavedModelSource):
        path = spec.resolve(source.path)
        if not (path / "saved_model.pb").is_file() and not (path / "saved_model.pbtxt").is_file():
            problems.append((("model", "source", "path"),
                             f"{path} holds no saved_model.pb; point at the SavedModel directory itself"))
    if isinstance(spec.model.labels, Path):
        path = spec.resolve(spec.model.labels)
        if not path.is_file():
            problems.append((("model", "labels"), f"labels file {path} does not exist"))
    images_dir = spec.benchmark.images.directory
    if images_dir is not None and not spec.resolve(images_dir).is_dir():
        problems.append((("benchmark", "images", "directory"), f"{spec.resolve(images_dir)} is not a directory"))
    return problems


def _dotted(loc: tuple[Any, ...]) -> str:
    parts = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif part in SOURCE_KINDS:
            continue  # pydantic's union-member tag, not a key the user wrote
        else:
            parts.append(("." if parts else "") + str(part))
    return "".join(parts) or "<top level>"


def _yaml_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(p for p in loc if p not in SOURCE_KINDS)


def load_spec(path: str | Path, tuned: bool = True) -> Spec:
    """Load, validate and freeze a spec file. Raises SpecError naming file:line for every problem.

    With serving.tuned set (and `tuned`), the serving section is the one make tune recommended.
    """
    spec = _load_spec(Path(path), listed_by=None)
    return _apply_tuned(spec) if tuned and spec.serving.tuned else spec


def tune_result_path(spec: Spec, reference: str) -> Path:
    """The tune.json serving.tuned names: 'latest' of the model's tune runs, a tune directory, or a tune.json."""
    if reference == "latest":
        return spec.resolve(spec.benchmark.output_dir) / spec.name / "tune" / "latest" / "tune.json"
    path = spec.resolve(Path(reference))
    return path / "tune.json" if path.is_dir() else path


def _apply_tuned(spec: Spec) -> Spec:
    import json

    where = spec.where("serving", "tuned")
    path = tune_result_path(spec, spec.serving.tuned)
    try:
        result = json.loads(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"{where}: serving.tuned: {spec.serving.tuned!r}: there is no tune result at {path}; run "
                        f"make tune SPEC={spec.origin} SLO=p99:200ms first, or remove serving.tuned") from None
    except (OSError, ValueError) as exc:
        raise SpecError(f"{where}: serving.tuned: {path} cannot be read as a tune result ({exc})") from None
    try:
        result = TuneResult.from_dict(result, str(path))
    except UsageError as exc:  # a newer layout, or not a tune result
        raise SpecError(f"{where}: serving.tuned: {exc}") from None
    best = result.best
    if best is None or not isinstance(best.get("config"), dict):
        raise SpecError(f"{where}: serving.tuned: {path} has no recommendation (no trial met the SLO, or the search "
                        "did not finish its baseline): rerun make tune, or remove serving.tuned")
    if result.model != spec.name:
        raise SpecError(f"{where}: serving.tuned: {path} tuned model {result.model!r}, not {spec.name!r}")
    try:
        serving = apply_config(spec.serving, best["config"])
    except (ValidationError, TypeError, ValueError) as exc:
        raise SpecError(f"{where}: serving.tuned: the configuration in {path} is not valid here: {exc}") from None
    tuned = spec.model_copy(update={"serving": serving})
    tuned._tuned_from = path
    return tuned


def _load_spec(path: Path, listed_by: Optional[Path]) -> Spec:
    try:
        document = load_yaml_with_lines(path)
    except YamlSourceError as exc:
        raise SpecError(str(exc)) from None
    if not isinstance(document.data, dict):
        raise SpecError(f"{path}:1: a spec is a YAML mapping with keys name, model, export, serving, benchmark")
    try:
        spec = Spec.model_validate(document.data)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            loc = _yaml_loc(tuple(error["loc"]))
            if error["type"] == "union_tag_invalid":
                loc = loc + ("kind",)
            lines.append(f"{path}:{document.line_of(loc)}: {_dotted(tuple(error['loc']))}: {_describe(error, Spec)}")
        raise SpecError("\n".join(lines)) from None
    spec._origin = path.resolve()
    spec._lines = dict(document.lines)
    spec._sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    problems = _check_files(spec)
    if listed_by is None:
        problems += _load_companions(spec)
    elif spec.serving.also_serve:
        problems.append((("serving", "also_serve"), f"is listed by {listed_by}'s serving.also_serve, so it cannot "
                                                    "list models itself: list every model in that spec instead"))
    if problems:
        raise SpecError("\n".join(f"{path}:{document.line_of(loc)}: {_dotted(loc)}: {msg}" for loc, msg in problems))
    return spec


def _load_companions(spec: Spec) -> list[tuple[tuple[Any, ...], str]]:
    """Load serving.also_serve's specs into spec._companions; returns the problems found."""
    problems, companions, names = [], [], {spec.name}
    for index, listed in enumerate(spec.serving.also_serve):
        loc = ("serving", "also_serve", index)
        path = spec.resolve(listed)
        if not path.is_file():
            problems.append((loc, f"spec file {path} does not exist"))
            continue
        try:
            companion = _load_spec(path, listed_by=spec.origin)
        except SpecError as exc:
            problems.append((loc, f"{path} is not a valid spec: {exc}"))
            continue
        if companion.name in names:
            problems.append((loc, f"{path} names its model '{companion.name}', which this server already serves: "
                                  "model names must be distinct"))
            continue
        names.add(companion.name)
        companions.append(companion)
    spec._companions = tuple(companions)
    return problems


def json_schema() -> dict[str, Any]:
    """JSON Schema of the spec for editors (generated from the same pydantic models)."""
    schema = Spec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "tfserve-bench model spec"
    return schema
