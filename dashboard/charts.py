"""Line charts as server-rendered SVG: no JavaScript, no build step, no library.

``line_chart`` takes one or more series of (x, y) points (x a datetime or a
number) and returns markup safe to put in a template. Gaps (None) break the
line. The y axis starts at zero unless values go negative, so a small wiggle
does not look like a cliff.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape

from django.utils.safestring import SafeString, mark_safe

PALETTE = ("#2563eb", "#f59e0b", "#8b5cf6", "#15803d", "#db2777", "#0891b2", "#b91c1c", "#4b5563")


@dataclass
class Series:
    label: str
    points: Sequence[tuple[datetime | float, float | None]]
    color: str | None = None


def _x(value: datetime | float) -> float:
    return value.timestamp() if isinstance(value, datetime) else float(value)


def _tick(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value / 1000:.1f}k"
    if abs(value) >= 10 or value == 0:
        return f"{value:.0f}"
    return f"{value:.2g}"


def line_chart(
    series: Sequence[Series],
    *,
    title: str = "",
    unit: str = "",
    width: int = 560,
    height: int = 180,
    y_max: float | None = None,
    marks: Sequence[tuple[float, str]] = (),
) -> SafeString:
    """An SVG line chart; with no points at all, a short note instead of empty axes.

    ``marks`` are (x, label) pairs drawn as dashed vertical lines across the plot, each
    with its label as a tooltip: events on the x axis, such as the steps a checkpoint was
    taken at on a chart of step time.
    """
    points = [(_x(x), y) for s in series for x, y in s.points if y is not None]
    label = escape(title + (f" ({unit})" if unit else ""))
    if not points:
        return mark_safe(f'<p class="empty small">{label}: no data for this period yet.</p>')  # noqa: S308 - escaped
    left, right, top, bottom = 44, 10, 18, 22
    plot_w, plot_h = width - left - right, height - top - bottom
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x1 = x0 + 1
    y0 = min(0.0, min(ys))
    y1 = y_max if y_max is not None else max(ys)
    if y1 <= y0:
        y1 = y0 + 1
    y1 *= 1.05 if y_max is None else 1

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return top + plot_h - (y - y0) / (y1 - y0) * plot_h

    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{label}">',
        f'<text x="{left}" y="12">{label}</text>',
    ]
    for i in range(5):
        value = y0 + (y1 - y0) * i / 4
        y = sy(value)
        parts.append(f'<line class="grid-line" x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 3:.1f}" text-anchor="end">{_tick(value)}</text>')
    parts.append(f'<line class="axis" x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}"/>')
    for x, text in marks:
        if x0 <= x <= x1:
            parts.append(
                f'<line class="mark" x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{top}" y2="{top + plot_h}">'
                f"<title>{escape(text)}</title></line>"
            )
    is_time = any(isinstance(x, datetime) for s in series for x, _ in s.points)
    for x in (x0, (x0 + x1) / 2, x1):
        text = datetime.fromtimestamp(x).astimezone().strftime("%H:%M") if is_time else _tick(x)
        anchor = "start" if x == x0 else ("end" if x == x1 else "middle")
        parts.append(f'<text x="{sx(x):.1f}" y="{height - 6}" text-anchor="{anchor}">{text}</text>')
    legend = []
    for n, s in enumerate(series):
        color = escape(s.color or PALETTE[n % len(PALETTE)])
        runs: list[list[str]] = [[]]
        for x, y in s.points:
            if y is None:
                runs.append([])
                continue
            runs[-1].append(f"{sx(_x(x)):.1f},{sy(y):.1f}")
        for run in runs:
            if len(run) == 1:
                cx, cy = run[0].split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{color}"/>')
            elif run:
                parts.append(f'<polyline class="series" stroke="{color}" points="{" ".join(run)}"/>')
        legend.append(f'<span><i style="background:{color}"></i>{escape(s.label)}</span>')
    parts.append("</svg>")
    if len(series) > 1:
        parts.append(f'<div class="chart-legend">{"".join(legend)}</div>')
    # Every text placed in the markup went through escape(); the rest are numbers.
    return mark_safe("".join(parts))  # noqa: S308
