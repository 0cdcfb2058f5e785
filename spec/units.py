"""The spec's units, as plain parsers (no pydantic): durations, SLOs, fractions and memory sizes. The schema's validators and
the command-line overrides both read their values through these."""
from __future__ import annotations

import re
from typing import Any


def _scaled(value: Any, units: dict, what: str, example: str) -> float:
    """A number, or a string of a number and one of `units` (name -> scale; None: no unit), scaled."""
    if isinstance(value, bool):
        raise ValueError(f"a {what} is a number or a string like {example}")
    if isinstance(value, (int, float)):
        return float(value)
    names = "|".join(sorted((re.escape(u) for u in units if u), key=len, reverse=True))
    match = re.fullmatch(rf"\s*(\d+(?:\.\d+)?)\s*({names})?\s*", str(value))
    if not match:
        raise ValueError(f"'{value}' is not a {what}; use e.g. {example}")
    return float(match.group(1)) * units[match.group(2)]


def parse_duration(value: Any) -> float:
    """'30s', '2m', '1h', '500ms' or a number of seconds, as seconds (float)."""
    seconds = _scaled(value, {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}, "duration", "30s, 2m, 500ms")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_slo(value: Any) -> dict:
    """'p99:100ms' (or {percentile: 99, latency: 100ms}) as {'percentile': 99.0, 'latency_ms': 100.0}."""
    if isinstance(value, dict):
        unknown = set(value) - {"percentile", "latency"}
        if unknown or set(value) != {"percentile", "latency"}:
            raise ValueError("an SLO is 'p99:100ms' or a mapping with exactly the keys percentile and latency")
        percentile, latency = value["percentile"], value["latency"]
    else:
        match = re.fullmatch(r"\s*p(\d+(?:\.\d+)?)\s*:\s*(\S+)\s*", str(value))
        if not match:
            raise ValueError(f"'{value}' is not an SLO; write a percentile and a latency, e.g. p99:100ms or p50:2s")
        percentile, latency = match.group(1), match.group(2)
    try:
        percentile = float(percentile)
    except (TypeError, ValueError):
        raise ValueError(f"the SLO percentile {percentile!r} is not a number") from None
    if not 0 < percentile < 100:
        raise ValueError(f"the SLO percentile must be above 0 and below 100 (got {percentile:g})")
    if isinstance(latency, (int, float)) and not isinstance(latency, bool):
        raise ValueError(f"the SLO latency {latency!r} needs a unit, e.g. 100ms or 0.5s")
    seconds = parse_duration(latency)
    if seconds <= 0:
        raise ValueError("the SLO latency must be above zero")
    return {"percentile": percentile, "latency_ms": seconds * 1000.0}


def parse_fraction(value: Any) -> float:
    """'5%' or 0.05 as 0.05."""
    if isinstance(value, bool):
        raise ValueError("write a percentage such as 5% or a fraction such as 0.05")
    text = str(value).strip()
    try:
        number = float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        raise ValueError(f"'{value}' is not a percentage; write e.g. 5% or 0.05") from None
    return number


def parse_mebibytes(value: Any) -> float:
    """'512MiB', '2GiB', '1.5GB' (read as GiB) or a number of MiB, as MiB (float)."""
    units = {None: 1.0, **{u: 1 / 1024 for u in ("K", "KB", "KiB")}, **{u: 1.0 for u in ("M", "MB", "MiB")},
             **{u: 1024.0 for u in ("G", "GB", "GiB")}}
    mib = _scaled(value, units, "memory size", "512MiB or 2GiB")
    if not mib > 0:
        raise ValueError("a memory size must be above zero")
    return mib
