"""Every request's latency at full resolution, the CPU the load generator, the server and the rest of the
machine used, and the machine's speed on a fixed workload.

Locust's own statistics round response times into buckets; the report's percentiles come from
these samples instead. Free of Locust imports: it only subscribes to the environment's events.
"""
from __future__ import annotations

import functools
import json
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

DISTURBED_PERCENT = 20.0  # other processes' CPU, or time stolen from this VM, over which a run shared its machine


@dataclass(frozen=True)
class HostCpu:
    """Machine-wide CPU seconds so far: busy (running anything, all cores), stolen from this VM by its hypervisor,
    and this cgroup's throttled time (None where the kernel does not say)."""
    busy: float
    steal: float
    throttled: Optional[float]


def cgroup_throttled_seconds(membership: Path = Path("/proc/self/cgroup"),
                             root: Path = Path("/sys/fs/cgroup")) -> Optional[float]:
    """Seconds this process's cgroup was throttled by its CPU quota (cgroup v2 or v1), or None."""
    found = _throttle_stat(membership, root)
    if found is None:
        return None
    path, key, scale = found
    try:
        for stat in path.read_text().splitlines():
            name, _, value = stat.partition(" ")
            if name == key:
                return int(value) * scale
    except (OSError, ValueError):
        return None
    return None


@functools.lru_cache(maxsize=8)
def _throttle_stat(membership: Path, root: Path) -> Optional[tuple[Path, str, float]]:
    """(the cgroup's cpu.stat, the throttled-time key, its unit in seconds), found once per process: a process
    does not change cgroups during a run."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _id, controllers, where = line.split(":", 2)
        if controllers == "":  # v2: throttled_usec in the unified hierarchy
            found = root / where.lstrip("/") / "cpu.stat", "throttled_usec", 1e-6
        elif "cpu" in controllers.split(","):  # v1: throttled_time (ns) in the cpu controller's hierarchy
            found = root / controllers / where.lstrip("/") / "cpu.stat", "throttled_time", 1e-9
        else:
            continue
        if found[0].is_file():
            return found
    return None


def host_cpu() -> Optional[HostCpu]:
    """The machine's CPU use so far, or None where it cannot be read."""
    import psutil

    try:
        times = psutil.cpu_times()
    except (psutil.Error, OSError):
        return None
    steal = getattr(times, "steal", 0.0)
    idle = times.idle + getattr(times, "iowait", 0.0)
    busy = sum(times) - idle - steal - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    return HostCpu(busy, steal, cgroup_throttled_seconds())


def host_percents(begin: Optional[HostCpu], end: Optional[HostCpu], wall: float) -> dict:
    """The machine's CPU between two readings, in % of one core: busy, stolen, throttled (None: not known)."""
    if begin is None or end is None or wall <= 0:
        return {"host_cpu_percent": None, "steal_percent": None, "throttled_percent": None}
    throttled = (None if begin.throttled is None or end.throttled is None
                 else 100.0 * (end.throttled - begin.throttled) / wall)
    return {"host_cpu_percent": 100.0 * (end.busy - begin.busy) / wall,
            "steal_percent": 100.0 * (end.steal - begin.steal) / wall, "throttled_percent": throttled}


# the machine's speed while a run goes on (SpeedProbe): one zlib deflate of 32 KiB of fixed data, about 1 ms here,
# timed every PROBE_EVERY_S by a thread of the process that waits for the run
PROBE_BYTES = 1 << 15
PROBE_EVERY_S = 0.25
PROBE_MIN_SLICES = 3


@functools.lru_cache(maxsize=1)
def _probe_data() -> bytes:
    return np.random.default_rng(0).integers(0, 16, PROBE_BYTES, dtype=np.uint8).tobytes()  # fixed, compressible


def speed_slice_ms() -> float:
    """Milliseconds this machine takes for one fixed piece of CPU work (zlib level 6 over PROBE_BYTES of fixed
    data)."""
    data = _probe_data()
    started = time.perf_counter()
    zlib.compress(data, 6)
    return (time.perf_counter() - started) * 1000.0


class SpeedProbe:
    """The machine's speed during a run: a thread times the same fixed work (speed_slice_ms) every PROBE_EVERY_S
    from enter to exit; `median_ms` is the median slice (None with fewer than PROBE_MIN_SLICES).

    The same work on the same machine under the same load takes the same time. A virtual machine whose host gives
    it a slower share of a core (another tenant on its sibling hyperthread, a lower clock) takes longer with no
    process of its own any busier, which neither the machine's CPU use nor the hypervisor's steal shows. The
    slices also share the cores with the run itself, so the figure holds against runs of the same cell (the same
    load), not against a run of another load."""

    def __init__(self, every_s: float = PROBE_EVERY_S):
        self.every_s, self.slices = every_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="speed-probe", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.slices.append(speed_slice_ms())

    def __enter__(self) -> "SpeedProbe":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def median_ms(self) -> Optional[float]:
        return float(np.median(self.slices)) if len(self.slices) >= PROBE_MIN_SLICES else None


def process_cpu_seconds(pid: int) -> Optional[float]:
    """User + system CPU seconds of a process and its live children (all threads), or None if it is gone.

    Children count because a container's first process may be a shell or an init that runs the server.
    """
    import psutil

    try:
        process = psutil.Process(pid)
        family = [process, *process.children(recursive=True)]
        total = 0.0
        for member in family:
            try:
                times = member.cpu_times()
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            total += times.user + times.system
    except (psutil.Error, OSError):
        return None
    return total


@dataclass(frozen=True)
class Mark:
    """One sub-window boundary as this process saw it."""
    wall: float                    # time.perf_counter()
    cpu: float                     # this process's CPU seconds
    server_cpu: Optional[float]    # the server's CPU seconds (None: not known)
    host: Optional[HostCpu]        # the whole machine's (None: not known)
    outstanding: Optional[float]   # the users' request-seconds integral (None: not kept)


class Recorder:
    """Collects every request answered inside the window: completion time, latency, service time, due time, ...

    Closed loop, the window is the requests completing inside it. Open loop, it is the requests *due* inside it:
    after the window closes, recording goes on (the schedule keeps running, so the system does not empty) until
    those have answered or the drain time is up (`stop`); throughput still counts completions inside the window.
    """

    def __init__(self, environment, server_pid: Optional[int] = None, scraper=None):
        self.server_pid = server_pid
        self.scraper = scraper  # a servermetrics.Scraper: the server's metrics page at the window's two ends
        self.reset()
        environment.events.request.add_listener(self._on_request)

    def reset(self) -> None:
        self.recording = True
        self.samples: list[tuple] = []
        self.failures: Counter = Counter()
        self.window: Optional[tuple[float, float]] = None
        self.marks: list[Mark] = []  # one per sub-window boundary, the first where measuring began
        self.cpu_percent: Optional[float] = None
        self.server_cpu_percent: Optional[float] = None
        self.host: dict = host_percents(None, None, 0.0)
        self._outstanding = None  # () -> request-seconds outstanding so far (the users' own count, not the samples)
        self.in_flight_mean: Optional[float] = None
        self.settled: dict = {}  # how the window was settled (sub-window width, windows measured and used, stable)
        self._taken = 0  # samples already handed out by take_new

    def _on_request(self, request_type, response_time, exception=None, context=None, **_kwargs) -> None:
        if not self.recording:
            return
        context = context or {}
        due = context.get("due")
        self.samples.append((time.perf_counter(), float(response_time), exception is None, context.get("image", -1),
                             float("nan") if due is None else due, float(context.get("service_ms", response_time)),
                             bool(context.get("late", False))))
        if exception is not None:
            self.failures[str(exception)[:300]] += 1

    def add_unanswered(self, dues: list[float], reason: str) -> None:
        """Requests due in the window with no answer when the drain ended: failures, timed up to now."""
        now = time.perf_counter()
        for due in dues:
            self.samples.append((now, (now - due) * 1000.0, False, -1, due, float("nan"), False))
        if dues:
            self.failures[reason] += len(dues)

    def begin_window(self, outstanding=None) -> None:
        """Forget the warm-up; measure from now. `outstanding()`: the users' request-seconds integral so far."""
        self.samples.clear()
        self.failures.clear()
        self.marks.clear()
        self._taken = 0
        self._outstanding = outstanding
        self.mark()

    def mark(self) -> Mark:
        """A sub-window boundary: the time, this process's and the server's CPU, the users' outstanding-request
        integral and (in the process that times the window) the server's metrics page, all at this instant."""
        mark = Mark(time.perf_counter(), time.process_time(),
                    process_cpu_seconds(self.server_pid) if self.server_pid else None, host_cpu(),
                    self._outstanding() if self._outstanding is not None else None)
        if self.scraper is not None:  # after the instant is taken: a slow metrics page must not move the boundary
            self.scraper.scrape(f"mark{len(self.marks)}")
        self.marks.append(mark)
        return mark

    def take_new(self) -> dict:
        """The samples recorded since the last call, as lists, times from the first mark (what a worker sends
        its master at each sub-window boundary, so the master can judge whether the run has settled)."""
        start = self.marks[0].wall if self.marks else 0.0
        new = self.samples[self._taken:]
        self._taken += len(new)
        columns = list(zip(*new)) if new else [()] * 7
        return {"t": [t - start for t in columns[0]], "latency_ms": list(columns[1]), "ok": list(columns[2]),
                "due": [d - start for d in columns[4]]}

    def end_window(self, keep_recording: bool = False, span: Optional[tuple[int, int]] = None,
                   settled: Optional[dict] = None) -> None:
        """Close the window on the sub-windows `span` = (first, last) mark (default: the first mark to now).

        The window's CPU use (generator and server, in % of one core), requests in flight and server metrics
        are taken between those two marks. keep_recording (open loop): answers still arriving are recorded until
        `stop`.
        """
        self.recording = keep_recording
        if not self.marks:
            return
        if span is None:
            self.mark()
            span = (0, len(self.marks) - 1)
        first, last = max(0, min(span[0], len(self.marks) - 1)), max(0, min(span[1], len(self.marks) - 1))
        begin, end = self.marks[first], self.marks[last]
        wall = end.wall - begin.wall
        self.window = (begin.wall, end.wall)
        self.settled = dict(settled or {})
        if wall <= 0:
            return
        self.cpu_percent = 100.0 * (end.cpu - begin.cpu) / wall
        self.host = host_percents(begin.host, end.host, wall)
        if begin.server_cpu is not None and end.server_cpu is not None:
            self.server_cpu_percent = 100.0 * (end.server_cpu - begin.server_cpu) / wall
        if begin.outstanding is not None and end.outstanding is not None:
            self.in_flight_mean = (end.outstanding - begin.outstanding) / wall
        if self.scraper is not None:
            self.scraper.choose(f"mark{first}", f"mark{last}")

    def stop(self) -> None:
        self.recording = False

    def snapshot(self) -> dict:
        """This process's window as plain data (what a Locust worker sends its master); times from window start."""
        if self.window is None and self.samples:  # not windowed (web UI): the whole run is the window
            self.window = (self.samples[0][0], self.samples[-1][0])
        start = self.window[0] if self.window else 0.0
        columns = list(zip(*self.samples)) if self.samples else [()] * 7
        return {"t": [t - start for t in columns[0]], "latency_ms": list(columns[1]), "ok": list(columns[2]),
                "image": list(columns[3]), "due": [d - start for d in columns[4]], "service_ms": list(columns[5]),
                "late": list(columns[6]),
                "window_s": (self.window[1] - self.window[0]) if self.window else 0.0,
                "in_flight_mean": self.in_flight_mean, "settled": self.settled,
                "cpu_percent": self.cpu_percent, "failures": dict(self.failures)}

    def save(self, path: Path, finished_at: float, extra: Optional[dict] = None) -> None:
        """Write this process's samples (a local, single-process run)."""
        write_samples(path, [self.snapshot()], self.server_cpu_percent, finished_at, extra=extra, host=self.host)


def other_cpu_percent(host: dict, generator_percents: list[Optional[float]],
                      server_cpu_percent: Optional[float]) -> Optional[float]:
    """The machine's busy CPU less the load generator's processes and the server's (% of one core, at least 0):
    what other work took while the window ran. None when the machine's figure is not known."""
    busy = host.get("host_cpu_percent")
    if busy is None:
        return None
    ours = sum(c for c in generator_percents if c is not None) + (server_cpu_percent or 0.0)
    return max(0.0, busy - ours)


def write_samples(path: Path, parts: list[dict], server_cpu_percent: Optional[float], finished_at: float,
                  window_s: Optional[float] = None, extra: Optional[dict] = None, host: Optional[dict] = None,
                  own_cpu_percent: Optional[float] = None) -> None:
    """Merge the snapshots of every load-generating process into one .npz: arrays plus the window's facts (JSON).

    The generator CPU is the busiest process's (each is one core's worth of gevent loop, so that is the one that
    saturates first); every process's figure is kept too. Requests in flight add up over the processes. `host`:
    the machine's CPU over the window (Recorder.host) in the process that timed it; own_cpu_percent: that
    process's CPU when it is not one of `parts` (a Locust master), so that the other work's share leaves it out.
    """
    def column(key: str, dtype) -> np.ndarray:
        return np.concatenate([np.asarray(part[key], dtype=dtype) for part in parts]) if parts else np.array([], dtype)

    times = column("t", np.float64)
    order = np.argsort(times, kind="stable")
    cpu = [part["cpu_percent"] for part in parts]
    known_cpu = [c for c in cpu if c is not None]
    failures: Counter = Counter()
    for part in parts:
        failures.update(part["failures"])
    in_flight = [part.get("in_flight_mean") for part in parts]
    meta = {"window_s": window_s if window_s is not None else max((p["window_s"] for p in parts), default=0.0),
            "generator_cpu_percent": max(known_cpu) if known_cpu else None, "generator_cpu_by_process": cpu,
            "requests_by_process": [len(part["t"]) for part in parts],
            "generator_processes": len(parts), "server_cpu_percent": server_cpu_percent,
            "in_flight_mean": sum(in_flight) if in_flight and None not in in_flight else None,
            "failures": dict(failures.most_common(20)), "finished_at": finished_at, **(host or {}),
            "other_cpu_percent": other_cpu_percent(host or {}, cpu + [own_cpu_percent], server_cpu_percent),
            **(extra or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, t=times[order], latency_ms=column("latency_ms", np.float64)[order],
             ok=column("ok", bool)[order], image=column("image", np.int32)[order],
             due=column("due", np.float64)[order], service_ms=column("service_ms", np.float64)[order],
             late=column("late", bool)[order], meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
