"""Charts drawn on the server as inline SVG: no script, no library, nothing fetched.

Why SVG on the server rather than a vendored chart library: the figures are few (a sparkline,
bars, a weekly line), the pages must work under a strict Content-Security-Policy with no inline
script, and a chart that is part of the HTML is readable by a screen reader (each chart has a
``<title>`` and the numbers are in a table next to it).
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def sparkline(values: Sequence[int], title: str, width: int = 120, height: int = 24) -> Markup:
    """A polyline of ``values`` (oldest first) scaled to the largest."""
    top = max(values, default=0) or 1
    n = max(len(values) - 1, 1)
    points = " ".join(
        f"{_num(i * width / n)},{_num(height - 2 - v * (height - 4) / top)}"
        for i, v in enumerate(values)
    )
    return Markup(
        f'<svg class="spark" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}"><title>{escape(title)}</title>'
        f'<polyline fill="none" stroke="currentColor" stroke-width="1.5" points="{points}"/>'
        "</svg>"
    )


def bars(
    items: Sequence[tuple[str, float | None]], title: str, unit: str = "", top: float = 0
) -> Markup:
    """Horizontal bars, one per (label, value), scaled to ``top`` (or the largest value); a
    value of None (nothing to measure) is drawn as a dash, not as zero."""
    top = top or max((v or 0 for _l, v in items), default=0) or 1
    row, label_w, bar_w = 22, 160, 360
    height = row * len(items) + 8
    parts = [
        f'<svg class="chart" role="img" width="{label_w + bar_w + 70}" height="{height}" '
        f'viewBox="0 0 {label_w + bar_w + 70} {height}"><title>{escape(title)}</title>'
    ]
    for i, (label, value) in enumerate(items):
        y = 4 + i * row
        w = max(value or 0, 0) * bar_w / top
        shown = "–" if value is None else f"{_num(value)}{escape(unit)}"
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{escape(label[:24])}</text>'
            f'<rect class="bar" x="{label_w}" y="{y + 3}" width="{_num(w)}" height="{row - 6}"/>'
            f'<text x="{_num(label_w + w + 4)}" y="{y + 15}">{shown}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def lines(
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None]]],
    title: str,
    unit: str = "",
    top: float = 0,
) -> Markup:
    """One polyline per (name, values) over the x ``labels`` (weeks), scaled to ``top`` (or
    the largest value); gaps where None."""
    width, height, left, bottom = 560, 180, 44, 24
    top = top or max((v for _n, vs in series for v in vs if v is not None), default=0) or 1
    n = max(len(labels) - 1, 1)
    plot_w, plot_h = width - left - 10, height - bottom - 10

    def xy(i: int, v: float) -> str:
        return f"{_num(left + i * plot_w / n)},{_num(10 + plot_h - v * plot_h / top)}"

    parts = [
        f'<svg class="chart" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}"><title>{escape(title)}</title>',
        f'<line class="axis" x1="{left}" y1="{10 + plot_h}" x2="{width - 10}" y2="{10 + plot_h}"/>',
        f'<text x="{left - 4}" y="14" text-anchor="end">{_num(top)}{escape(unit)}</text>',
        f'<text x="{left - 4}" y="{10 + plot_h}" text-anchor="end">0</text>',
    ]
    for i, label in enumerate(labels):
        if i % max(len(labels) // 6, 1) == 0:
            x = _num(left + i * plot_w / n)
            parts.append(
                f'<text x="{x}" y="{height - 6}" text-anchor="middle">{escape(label)}</text>'
            )
    for k, (name, values) in enumerate(series):
        runs: list[list[str]] = [[]]
        for i, v in enumerate(values):
            if v is None:
                runs.append([])
            else:
                runs[-1].append(xy(i, v))
        for run in runs:
            if len(run) == 1:
                x, y = run[0].split(",")
                parts.append(f'<circle class="s{k}" cx="{x}" cy="{y}" r="2.5"/>')
            elif run:
                parts.append(
                    f'<polyline class="s{k}" fill="none" points="{" ".join(run)}">'
                    f"<title>{escape(name)}</title></polyline>"
                )
    parts.append("</svg>")
    return Markup("".join(parts))
