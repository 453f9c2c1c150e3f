"""The bench's figures as a Markdown table: one row per figure, one column per init, then
ratios (pmd / anchor: below 1 is better for pmd on times, memory, CPU, files; above 1 on
throughput and counts marked `better: higher`)."""

from __future__ import annotations

import statistics
from typing import Any


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def med(raw: dict[str, Any], scenario: str, kind: str, key: str) -> float | None:
    """The median over runs of one figure (raw: {scenario: {kind: [run, ...]}})."""
    runs = raw.get(scenario, {}).get(kind, [])
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def pooled(raw: dict[str, Any], scenario: str, kind: str, key: str, q: float) -> float | None:
    """A percentile of one list figure, pooled over runs."""
    values = [v for r in raw.get(scenario, {}).get(kind, []) for v in r.get(key, [])]
    return percentile(values, q)


def ratio(pmd: float | None, anchor: float | None) -> str:
    if pmd is None or anchor is None:
        return "-"
    if anchor == 0:
        return "=" if pmd == 0 else "∞"
    value = pmd / anchor
    return f"{value:.2f}" if value >= 0.1 else f"{value:.2g}"  # 0.0016, not 0.00


def fmt_value(value: float | None, fmt: str) -> str:
    if value is None:
        return "-"
    if value != 0 and abs(value) < 0.01 and fmt == "{:.3g}":
        return f"{value:.2g}"
    return fmt.format(value)


def render(rows: list[dict[str, Any]], kinds: list[str],
           pairs: list[tuple[str, str]] | None = None) -> str:
    """rows: {figure, unit, values: {kind: value}, fmt}; pairs: the (numerator, anchor)
    ratio columns, by default pmd against every other kind."""
    if pairs is None:
        pairs = [("pmd", k) for k in kinds if k != "pmd"]
    head = ["figure", "unit", *kinds, *(f"{a}/{b}" for a, b in pairs)]
    body = []
    for r in rows:
        cells = [r["figure"], r["unit"]]
        cells += [fmt_value(r["values"].get(k), r["fmt"]) for k in kinds]
        cells += [ratio(r["values"].get(a), r["values"].get(b)) for a, b in pairs]
        body.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body, strict=False)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=False)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for cells in body:
        lines.append("| " + " | ".join(
            (c.ljust(w) if i < 2 else c.rjust(w))
            for i, (c, w) in enumerate(zip(cells, widths, strict=False))) + " |")
    return "\n".join(lines)
