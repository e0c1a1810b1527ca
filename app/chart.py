"""The form's chart: an item's recent sales and the forecast over the horizon, as inline SVG.

Drawn on the server from numbers only (no user text reaches the markup), so the page needs
no JavaScript or CDN to show it.
"""

from __future__ import annotations

import datetime as dt
from typing import Sequence

WIDTH, HEIGHT = 760, 280
LEFT, RIGHT, TOP, BOTTOM = 52, 16, 28, 40


def _date(day: int) -> dt.date:
    return dt.date(1970, 1, 1) + dt.timedelta(days=int(day))


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    for step in (1, 2, 2.5, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000):
        if value <= step:
            return float(step)
    return float(value) * 1.1


def sales_chart_svg(history_days: Sequence[int], history_units: Sequence[float], forecast_days: Sequence[int],
                    forecast_units: Sequence[float], chosen_day: int) -> str:
    """An SVG line chart; history in blue, forecast in orange, the chosen day marked."""
    first, last = int(history_days[0]), int(forecast_days[-1])
    top_value = _nice_max(max(list(history_units) + list(forecast_units) + [0.0]) * 1.05)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(day: int) -> float:
        return LEFT + plot_w * (int(day) - first) / max(1, last - first)

    def y(units: float) -> float:
        return TOP + plot_h * (1 - float(units) / top_value)

    def points(days, units) -> str:
        return " ".join(f"{x(d):.1f},{y(u):.1f}" for d, u in zip(days, units))

    origin = int(history_days[-1])
    chosen_units = dict(zip((int(d) for d in forecast_days), forecast_units)).get(int(chosen_day), 0.0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="chart-title">',
        f'<title id="chart-title">Units sold per day from {_date(first)} to {_date(origin)} and the forecast '
        f'from {_date(forecast_days[0])} to {_date(last)}</title>',
    ]
    for fraction in (0, 0.5, 1):
        value = top_value * fraction
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(value):.1f}" y2="{y(value):.1f}"/>')
        parts.append(f'<text class="tick" x="{LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end">{value:g}</text>')
    parts.append(f'<line class="origin" x1="{x(origin):.1f}" x2="{x(origin):.1f}" y1="{TOP}" y2="{TOP + plot_h}"/>')
    for day, anchor in ((first, "start"), (origin, "middle"), (last, "end")):
        parts.append(f'<text class="tick" x="{x(day):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="{anchor}">'
                     f'{_date(day):%d %b}</text>')
    parts.append(f'<polyline class="history" points="{points(history_days, history_units)}"/>')
    joined_days = [origin] + [int(d) for d in forecast_days]
    joined_units = [float(history_units[-1])] + [float(u) for u in forecast_units]
    parts.append(f'<polyline class="forecast" points="{points(joined_days, joined_units)}"/>')
    parts.append(f'<circle class="chosen" cx="{x(chosen_day):.1f}" cy="{y(chosen_units):.1f}" r="5"/>')
    parts.append(f'<text class="legend" x="{LEFT}" y="16"><tspan class="history-key">━ units sold</tspan>'
                 f'<tspan dx="16" class="forecast-key">━ forecast</tspan>'
                 f'<tspan dx="16" class="chosen-key">● your date</tspan></text>')
    parts.append("</svg>")
    return "\n".join(parts)
