"""The spec's units, as plain parsers (no pydantic): durations, SLOs and fractions. The schema's validators and
the command-line overrides both read their values through these."""
from __future__ import annotations

import re
from typing import Any


def parse_duration(value: Any) -> float:
    """'30s', '2m', '1h', '500ms' or a number of seconds, as seconds (float)."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '30s', '2m'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", str(value))
        if not match:
            raise ValueError(f"'{value}' is not a duration; use e.g. 30s, 2m, 500ms")
        scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]
        seconds = float(match.group(1)) * scale
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
