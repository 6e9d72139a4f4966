"""Turning raw samples into medians, ratios, flags, a text table and JSON."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

BASELINE = "aiohttp"
# the scaleout scenario compares wsgate with itself: two instances on Redis vs one on memory
SCALEOUT_MEMORY = "wsgate mem x1"
SCALEOUT_REDIS = "wsgate redis x2"
BASELINES = {"scaleout": SCALEOUT_MEMORY}
LOADGEN_BUSY_PCT = 85.0
OTHER_LOAD_PCT = 30.0  # CPU % taken on the benchmark's two CPUs by other processes (or softirqs)
NOISY_SPREAD = 0.15  # flag a case whose samples spread more than this around the median


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool


METRICS: dict[str, tuple[Metric, ...]] = {
    "echo": (Metric("msg_per_s", "throughput", "msg/s", True),),
    "latency": (
        Metric("lat_p50_us", "rtt p50", "µs", False),
        Metric("lat_p99_us", "rtt p99", "µs", False),
    ),
    "broadcast": (
        Metric("deliveries_per_s", "deliveries", "deliv/s", True),
        Metric("lat_p50_us", "reach-all p50", "µs", False),
    ),
    "idle": (
        Metric("rss_per_conn_at_bytes", "memory/conn", "B", False),
        Metric("open_s", "open all", "s", False),
    ),
    "many": (
        Metric("rss_per_conn_bytes", "memory/conn", "B", False),
        Metric("open_s", "open all", "s", False),
        Metric("server_cpu_pct", "idle CPU", "%", False),
        Metric("bcast_all_ms", "bcast to all p50", "ms", False),
    ),
    "startup": (Metric("startup_ms", "spawn→first ws", "ms", False),),
}
METRICS["scaleout"] = METRICS["broadcast"]
# the channels scenario (bench/channels.py): four groups of rows, each with its own baseline
METRICS["ch-fanout"] = (Metric("deliveries_per_s", "deliveries", "deliv/s", True),)
METRICS["ch-memory"] = (
    Metric("rss_per_conn_at_bytes", "memory/conn", "B", False),
    Metric("open_s", "open+subscribe all", "s", False),
)
METRICS["ch-subscribe"] = (Metric("msg_per_s", "sub+unsub pairs", "pairs/s", True),)
METRICS["ch-api"] = (Metric("msg_per_s", "publishes", "pub/s", True),)
BASELINES.update({
    "ch-fanout": "fanout plugin",
    "ch-memory": "echo idle",
    "ch-subscribe": "echo same frame",
    "ch-api": "/api/publish aiohttp",
})
# the pusher scenario (bench/pusher.py)
METRICS["pu-fanout"] = (Metric("deliveries_per_s", "deliveries", "deliv/s", True),)
METRICS["pu-api"] = (Metric("msg_per_s", "triggers", "req/s", True),)
BASELINES.update({"pu-fanout": "fanout plugin", "pu-api": "/api/publish aiohttp"})


def baseline_for(scenario: str) -> str:
    return BASELINES.get(scenario, BASELINE)


@dataclass
class Row:
    scenario: str
    case: str
    server: str
    metric: str
    label: str
    unit: str
    higher_is_better: bool
    median: float | None
    samples: list[float]
    ratio_vs_baseline: float | None = None
    baseline: str = BASELINE
    server_cpu_us_per_msg: float | None = None
    server_cpu_pct: float | None = None
    loadgen_cpu_pct: float | None = None
    # median CPU % of each server-side process, when there are several (scaleout)
    server_cpu_parts_pct: dict[str, float | None] = field(default_factory=dict)
    failures: int = 0
    flags: list[str] = field(default_factory=list)


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _parts(samples: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    names: list[str] = []
    for s in samples:
        names += [n for n in s.get("server_cpu_parts_pct") or {} if n not in names]
    return {n: _median((s.get("server_cpu_parts_pct") or {}).get(n) for s in samples) for n in names}


def sample_flags(samples: Sequence[dict[str, Any]], failures: Sequence[str]) -> list[str]:
    flags: list[str] = []
    busy = [s["loadgen_cpu_pct"] for s in samples if s.get("loadgen_cpu_pct") is not None]
    if any(pct > LOADGEN_BUSY_PCT for pct in busy):
        flags.append(f"LOADGEN>{LOADGEN_BUSY_PCT:.0f}%")
    other = [s["other_cpu_pct"] for s in samples if s.get("other_cpu_pct") is not None]
    if other and max(other) > OTHER_LOAD_PCT:
        flags.append(f"other-load {max(other):.0f}%")
    if any(s.get("closed") for s in samples):
        flags.append("conn-closed")
    if any(s.get("settle_timed_out") for s in samples):
        flags.append("settle-timeout")
    if any(s.get("stray") for s in samples):
        flags.append("stray-frames")
    if failures:
        flags.append(f"FAILED {len(failures)}/{len(failures) + len(samples)}")
    return flags


def summarize(
    cases: Sequence[tuple[str, str]],
    servers: Sequence[str],
    samples: dict[tuple[str, str, str], list[dict[str, Any]]],
    failures: dict[tuple[str, str, str], list[str]],
) -> list[Row]:
    """One row per (case, server, metric); `cases` holds (scenario, case label)."""
    rows: list[Row] = []
    for scenario, case in cases:
        for metric in METRICS[scenario]:
            medians: dict[str, float | None] = {}
            case_rows: list[Row] = []
            for server in servers:
                key = (scenario, case, server)
                got = samples.get(key, [])
                failed = failures.get(key, [])
                if not got and not failed:
                    continue
                values = [float(s[metric.key]) for s in got if s.get(metric.key) is not None]
                row = Row(
                    scenario=scenario,
                    case=case,
                    server=server,
                    metric=metric.key,
                    label=metric.label,
                    unit=metric.unit,
                    higher_is_better=metric.higher_is_better,
                    median=_median(values),
                    samples=values,
                    server_cpu_us_per_msg=_median(s.get("server_cpu_us_per_msg") for s in got),
                    server_cpu_pct=_median(s.get("server_cpu_pct") for s in got),
                    loadgen_cpu_pct=_median(s.get("loadgen_cpu_pct") for s in got),
                    server_cpu_parts_pct=_parts(got),
                    baseline=baseline_for(scenario),
                    failures=len(failed),
                    flags=sample_flags(got, failed),
                )
                if row.median and len(values) > 1:
                    spread = (max(values) - min(values)) / row.median
                    if spread > NOISY_SPREAD:
                        row.flags.append(f"spread {spread:.0%}")
                medians[server] = row.median
                case_rows.append(row)
            base = medians.get(baseline_for(scenario))
            for row in case_rows:
                if base and row.median is not None:
                    row.ratio_vs_baseline = row.median / base
            rows.extend(case_rows)
    return rows


def _fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("msg/s", "deliv/s", "B", "pairs/s", "pub/s"):
        return f"{value:,.0f}"
    if unit == "s":
        return f"{value:.3f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}"


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _parts_note(row: Row) -> list[str]:
    if not row.server_cpu_parts_pct:
        return []
    return ["CPU " + " + ".join(f"{k} {_fmt(v, '.0f')}%" for k, v in row.server_cpu_parts_pct.items())]


def format_table(rows: Sequence[Row]) -> str:
    header = (
        "scenario",
        "case",
        "server",
        "metric",
        "value",
        "unit",
        "ratio vs base",
        "server CPU µs/msg",
        "server CPU %",
        "loadgen CPU %",
        "flag / note",
    )
    body: list[tuple[str, ...]] = []
    for row in rows:
        body.append(
            (
                row.scenario,
                row.case,
                row.server,
                row.label,
                _fmt_value(row.median, row.unit),
                row.unit,
                _fmt(row.ratio_vs_baseline, ".2f"),
                _fmt(row.server_cpu_us_per_msg, ".1f"),
                _fmt(row.server_cpu_pct, ".0f"),
                _fmt(row.loadgen_cpu_pct, ".0f"),
                " ".join([*row.flags, *_parts_note(row)]),
            )
        )
    numeric = {4, 6, 7, 8, 9}
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(widths[i]) if i in numeric else c.ljust(widths[i]) for i, c in enumerate(cells)]
        return " | ".join(parts).rstrip()

    out = [line(header), "-+-".join("-" * w for w in widths)]
    previous = None
    for row, cells in zip(rows, body, strict=True):
        group = (row.scenario, row.case)
        if previous is not None and group != previous:
            out.append("")
        previous = group
        out.append(line(cells))
    return "\n".join(out)
