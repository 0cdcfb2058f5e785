"""Model versions on disk -> loaded, servable versions, with TF Serving's lifecycle.

* A child directory of a base path is a version iff its name is an integer (`00000123` is 123).
* Policies: latest N (default 1), all, specific. The base path is polled every
  --file_system_poll_wait_seconds (0 = once at start, < 0 = never after start).
* Availability preserving: a new version is loaded (and warmed up) before an old one is unloaded; a
  version that fails to load is END with its error while the previous version keeps serving.
* --num_load_threads=N (N > 0): models load in parallel, up to N at once, at start and at each poll (a model's own
  versions in order, newest first); 0 loads them one after another in the poller, as TF Serving's manager thread does.
* Requests hold a version through `acquire`; unloading waits for in-flight requests to finish.
* Status keeps END entries, listed by descending version, like ServableStateMonitor.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

from server.configs import ModelConfig
from server.errors import Code, FailedPrecondition, InvalidArgument, NotFound, ServingError
from server.metrics import Metrics
from server.model import LoadedModel, LoadOptions
from server.tflite import TfLiteModel, has_tflite

log = logging.getLogger("server")

START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"


@dataclass
class VersionState:
    version: int
    path: Path
    state: str = START
    error_code: Code = Code.OK
    error_message: str = ""
    model: Optional[LoadedModel] = None
    in_flight: int = 0


@dataclass
class ServedModel:
    config: ModelConfig
    versions: dict[int, VersionState] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)


def discover_versions(base_path: str) -> Optional[dict[int, Path]]:
    """{version: directory} under base_path, or None if the base path does not exist."""
    base = Path(base_path)
    if not base.is_dir():
        return None
    found: dict[int, Path] = {}
    for child in sorted(base.iterdir()):
        if child.is_dir() and child.name.isdigit():
            found[int(child.name)] = child  # duplicates like 1 and 001: the last one wins, as in TF Serving
    return found


def aspired_versions(config: ModelConfig, on_disk: dict[int, Path]) -> set[int]:
    if config.policy == "all":
        return set(on_disk)
    if config.policy == "specific":
        return {v for v in config.versions if v in on_disk}
    return set(sorted(on_disk)[-config.num_versions:])


class Repository:
    """All served models. Thread-safe; one poller thread loads and unloads."""

    def __init__(self, configs: list[ModelConfig], load_options: LoadOptions, poll_seconds: float = 1.0,
                 warmup: Optional[Callable[[str, int, LoadedModel], None]] = None,
                 max_load_retries: int = 5, retry_interval_s: float = 60.0,
                 allow_labels_for_unavailable: bool = False, metrics: Optional[Metrics] = None,
                 load_threads: int = 0):
        self._options = load_options
        # --num_load_threads: one pool for the server's life (its threads start at the first parallel load)
        self._loader = ThreadPoolExecutor(load_threads, "load") if load_threads > 0 else None
        self._metrics = metrics if metrics is not None else Metrics()
        self._poll_seconds = poll_seconds
        self._warmup = warmup
        self._max_load_retries = max_load_retries
        self._retry_interval_s = retry_interval_s
        self._allow_labels_for_unavailable = allow_labels_for_unavailable
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._models: dict[str, ServedModel] = {c.name: ServedModel(c) for c in configs}
        self._stop = threading.Event()
        self._poller: Optional[threading.Thread] = None
        self._poll_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Load every model once (blocking, like ServerCore::Create), then poll in the background."""
        self._check_labels_before_load()
        self.poll_once()
        if self._poll_seconds > 0:
            self._poller = threading.Thread(target=self._poll_loop, name="version-poller", daemon=True)
            self._poller.start()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self._poll_seconds):
            try:
                self.poll_once()
            except Exception:  # a poller crash would silently freeze versions: log and go on
                log.exception("version poll failed")

    def stop(self) -> None:
        """Stop polling and unload everything (waits for in-flight requests)."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=30)
        with self._lock:
            states = [s for m in self._models.values() for s in m.versions.values() if s.state == AVAILABLE]
        for state in states:
            self._unload(state)
        if self._loader is not None:
            self._loader.shutdown(wait=True)

    def poll_once(self) -> None:
        """One pass over every model: load new aspired versions, then unload the ones no longer aspired."""
        with self._poll_lock:
            with self._lock:
                models = list(self._models.values())
            if self._loader is not None and len(models) > 1:
                list(self._loader.map(self._reconcile, models))  # a model's failure is raised here, as when serial
            else:
                for model in models:
                    self._reconcile(model)

    def _reconcile(self, model: ServedModel) -> None:
        on_disk = discover_versions(model.config.base_path)
        if on_disk is None:
            log.warning("FileSystemStoragePathSource encountered a filesystem access error: Could not find base "
                        "path %s for servable %s", model.config.base_path, model.config.name)
            on_disk = {}
        elif not on_disk:
            log.warning("No versions of servable %s found under base path %s. Did you forget to name your leaf "
                        "directory as a number (eg. '/1/')?", model.config.name, model.config.base_path)
        aspired = aspired_versions(model.config, on_disk)
        for version in sorted(aspired, reverse=True):  # newest first: it becomes Latest soonest
            with self._lock:
                state = model.versions.get(version)
                if state is not None and state.state in (LOADING, AVAILABLE):
                    continue
                if state is not None and state.state == END and state.path == on_disk[version] \
                        and state.error_code != Code.OK:
                    continue  # failed for good; a new directory of that number would retry
                state = VersionState(version=version, path=on_disk[version], state=LOADING)
                model.versions[version] = state
            self._load(model, state)
        with self._lock:
            serving_aspired = any(model.versions[v].state == AVAILABLE for v in aspired if v in model.versions)
            stale = [s for v, s in model.versions.items() if v not in aspired and s.state == AVAILABLE]
        # availability preserving: drop un-aspired versions only once an aspired one serves, or none is left
        if serving_aspired or not aspired:
            for state in sorted(stale, key=lambda s: s.version):
                self._unload(state)

    def _load(self, model: ServedModel, state: VersionState) -> None:
        """Load and warm up one version, then mark it AVAILABLE, or END with the last error."""
        name = model.config.name
        log.info("Loading servable version {name: %s version: %d}", name, state.version)
        loaded, error = self._load_with_retries(name, state)
        with self._lock:
            if loaded is None:
                state.state, state.error_code, state.error_message = END, error.code, error.message
            else:
                state.model, state.state = loaded, AVAILABLE
                log.info("Successfully loaded servable version {name: %s version: %d}", name, state.version)
            self._changed.notify_all()

    def _load_with_retries(self, name: str, state: VersionState) -> tuple[Optional[LoadedModel],
                                                                           Optional[ServingError]]:
        """(the loaded, warmed-up model, None), or (None, the last error) after every attempt failed.

        A failed warmup is a failed attempt (the loaded model is closed, never served); a shutdown while
        waiting for the next attempt ends the retries with the error seen so far."""
        attempts = self._max_load_retries + 1
        error: Optional[ServingError] = None
        for attempt in range(1, attempts + 1):
            try:
                return self._load_once(name, state), None
            except ServingError as exc:
                error = exc
                log.error("Loading servable version {name: %s version: %d} failed (attempt %d/%d): %s", name,
                          state.version, attempt, attempts, exc.message)
            if attempt == attempts:
                break
            if self._stop.wait(self._retry_interval_s):
                log.info("server stopping: no more load attempts for {name: %s version: %d}", name, state.version)
                break
        return None, error

    def _load_once(self, name: str, state: VersionState) -> LoadedModel:
        loaded = self._load_saved_model(str(state.path))
        if self._warmup is not None:
            try:
                self._warmup(name, state.version, loaded)
            except BaseException:
                loaded.close()
                raise
        return loaded

    def _load_saved_model(self, path: str) -> LoadedModel:
        started = time.perf_counter()
        try:
            if self._options.prefer_tflite and has_tflite(Path(path)):
                loaded = TfLiteModel.load(path, self._options)
            else:
                loaded = LoadedModel.load(path, self._options)
        except ServingError:
            self._metrics.record_load(path, False, 0)
            raise
        self._metrics.record_load(path, True, (time.perf_counter() - started) * 1e6)
        return loaded

    def _unload(self, state: VersionState) -> None:
        with self._lock:
            if state.state != AVAILABLE:
                return
            state.state = UNLOADING
            while state.in_flight:
                self._changed.wait(timeout=1.0)
            loaded, state.model = state.model, None
        if loaded is not None:
            loaded.close()
        with self._lock:
            state.state = END
            self._changed.notify_all()
        log.info("Done unloading servable version %d", state.version)

    # ------------------------------------------------------------------ config

    def _check_labels_before_load(self) -> None:
        with self._lock:
            for model in self._models.values():
                if model.config.labels and not self._allow_labels_for_unavailable:
                    label, version = next(iter(model.config.labels.items()))
                    raise FailedPrecondition(f"Request to assign label to version {version} of model "
                                             f"{model.config.name}, which is not currently available for inference")
                model.labels = dict(model.config.labels)

    def reload(self, configs: list[ModelConfig]) -> None:
        """Replace the model list (HandleReloadConfigRequest / config polling): new models are loaded before
        returning, models left out are unloaded, labels re-pointed (targets must be loaded)."""
        with self._lock:
            current = self._models
            updated: dict[str, ServedModel] = {}
            for config in configs:
                served = current.get(config.name)
                if served is None:
                    served = ServedModel(config)
                else:
                    served.config = config
                updated[config.name] = served
            removed = [m for name, m in current.items() if name not in updated]
            self._models = updated
        self.poll_once()
        with self._lock:
            for config in configs:
                served = self._models[config.name]
                for label, version in config.labels.items():
                    target = served.versions.get(version)
                    new_label = label not in served.labels
                    if (target is None or target.state != AVAILABLE) and not (
                            self._allow_labels_for_unavailable and new_label):
                        raise FailedPrecondition(f"Request to assign label to version {version} of model "
                                                 f"{config.name}, which is not currently available for inference")
                served.labels = dict(config.labels)
        for model in removed:
            for state in list(model.versions.values()):
                self._unload(state)

    # ------------------------------------------------------------------ requests

    def _resolve(self, name: str, version: Optional[int], label: Optional[str]) -> VersionState:
        model = self._models.get(name)
        if label is not None:
            if model is None or label not in model.labels:
                raise InvalidArgument(f"Unrecognized servable version label: {label}")
            version = model.labels[label]
        if version is not None:
            state = model.versions.get(version) if model else None
            if state is None or state.state != AVAILABLE:
                raise NotFound(f"Servable not found for request: Specific({name}, {version})")
            return state
        available = [s for s in (model.versions.values() if model else ()) if s.state == AVAILABLE]
        if not available:
            raise NotFound(f"Servable not found for request: Latest({name})")
        return max(available, key=lambda s: s.version)

    @contextmanager
    def acquire(self, name: str, version: Optional[int] = None,
                label: Optional[str] = None) -> Iterator[tuple[int, LoadedModel]]:
        """Hold a servable for one request: (resolved version, model). It is not unloaded until released."""
        with self._lock:
            state = self._resolve(name, version, label)
            state.in_flight += 1
            model = state.model
        try:
            yield state.version, model
        finally:
            with self._lock:
                state.in_flight -= 1
                if not state.in_flight:
                    self._changed.notify_all()

    def status(self, name: str, version: Optional[int] = None) -> list[VersionState]:
        """Version states, newest first (END entries kept). NOT_FOUND like GetModelStatus."""
        with self._lock:
            model = self._models.get(name)
            states = sorted(model.versions.values(), key=lambda s: -s.version) if model else []
            if version is not None:
                states = [s for s in states if s.version == version]
                if not states:
                    raise NotFound(f"Could not find version {version} of model {name}")
            elif not states:
                raise NotFound(f"Could not find any versions of model {name}")
            return [VersionState(s.version, s.path, s.state, s.error_code, s.error_message) for s in states]
