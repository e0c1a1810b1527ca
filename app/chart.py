"""The forecast chart: an item's recent sales and the forecast over the horizon, as inline SVG.

Drawn on the server from numbers only (no user text reaches the markup), so the page needs no
JavaScript, library or CDN to show it, and no inline style (it works under a strict CSP: the look
is in app/static/style.css). Every day can be read: hover a day (or Tab to a forecast day) and its
value appears. The SVG is a group, not an image: an image's parts are hidden from assistive technology, and
the forecast days are focusable parts (each an image with its spoken value). Two sizes are drawn, so the text
stays readable: the page shows the wide one on screens wider than a phone and the narrow one on phones (a CSS
media query picks).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Sequence

from markupsafe import Markup


@dataclass(frozen=True)
class ChartSize:
    name: str  # the CSS class that shows it: chart-wide or chart-narrow
    width: int
    height: int
    font: float  # px in the SVG's own units; the SVG is drawn at about 1:1 on the page
    tick_every_days: int
    left: int = 44
    right: int = 12
    top: int = 44
    bottom: int = 48


WIDE = ChartSize("chart-wide", width=720, height=330, font=13, tick_every_days=7)
NARROW = ChartSize("chart-narrow", width=340, height=300, font=13, tick_every_days=14, left=38, right=8)
SIZES = (WIDE, NARROW)


def day_date(day: int) -> dt.date:
    return dt.date(1970, 1, 1) + dt.timedelta(days=int(day))


def format_units(units: float) -> str:
    """Units sold, as the page shows them: one decimal (forecasts are fractional units)."""
    return f"{float(units):,.1f}"


def _nice_step(top: float, lines: int = 4) -> float:
    """A round grid step (1, 2, 2.5 or 5 × 10^k) giving about ``lines`` grid lines up to ``top``."""
    raw = max(top, 1e-9) / lines
    power = 10 ** math.floor(math.log10(raw))
    for multiple in (1, 2, 2.5, 5, 10):
        if raw <= multiple * power:
            return multiple * power
    return 10 * power


def _tick_decimals(step: float) -> int:
    """The fewest decimals that write every multiple of ``step`` (1, 2, 2.5 or 5 × 10^k) at its value: one decimal
    wrote a slow seller's 0.025 steps as 0.0, 0.0, 0.1, 0.1 and a 0.25 step as 0.2, 0.5, 0.8."""
    return next((d for d in range(10) if abs(round(step, d) - step) <= step * 1e-9), 10)


def _tick_label(value: float, decimals: int) -> str:
    return f"{value:,.{decimals}f}"  # every label of an axis alike: 0, 5, 10 or 0.00, 0.25, 0.50


def sales_chart_svg(history_days: Sequence[int], history_units: Sequence[float], forecast_days: Sequence[int],
                    forecast_units: Sequence[float], chosen_day: int, size: ChartSize = WIDE) -> Markup:
    """An SVG line chart: history (solid), forecast (dashed), the chosen day marked, every day readable."""
    first, last = int(history_days[0]), int(forecast_days[-1])
    origin = int(history_days[-1])
    peak = max([float(u) for u in history_units] + [float(u) for u in forecast_units] + [0.0])
    step = _nice_step(peak if peak > 0 else 1.0)
    top_value = step * max(1, math.ceil(peak * 1.02 / step))
    plot_left, plot_right = size.left, size.width - size.right
    plot_top, plot_bottom = size.top, size.height - size.bottom
    day_width = (plot_right - plot_left) / max(1, last - first)

    def x(day: int) -> float:
        return plot_left + day_width * (int(day) - first)

    def y(units: float) -> float:
        return plot_bottom - (plot_bottom - plot_top) * float(units) / top_value

    def points(days, units) -> str:
        return " ".join(f"{x(d):.1f},{y(u):.1f}" for d, u in zip(days, units))

    font = size.font
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart {size.name}" viewBox="0 0 {size.width} {size.height}" '
        f'role="group" aria-labelledby="{size.name}-title" aria-describedby="{size.name}-desc" font-size="{font}">',
        f'<title id="{size.name}-title">Units sold per day, {day_date(first):%d %b} to {day_date(origin):%d %b %Y}, '
        f'and the forecast, {day_date(forecast_days[0]):%d %b} to {day_date(last):%d %b %Y}</title>',
        f'<desc id="{size.name}-desc">The table beside the chart lists the forecast for every day.</desc>',
        f'<text class="axis-title" x="{plot_left}" y="{plot_top - 10}" text-anchor="middle">units / day</text>',
    ]
    decimals = _tick_decimals(step)
    for line in range(round(top_value / step) + 1):
        value = line * step  # not a running sum: no drift over the lines
        parts.append(f'<line class="grid" x1="{plot_left}" x2="{plot_right}" y1="{y(value):.1f}" y2="{y(value):.1f}"/>')
        parts.append(f'<text class="tick" x="{plot_left - 6}" y="{y(value) + font * 0.35:.1f}" text-anchor="end">'
                     f'{_tick_label(value, decimals)}</text>')
    # Date ticks on Mondays (weekly sales patterns line up), every week (wide) or fortnight (narrow).
    monday = first + (7 - day_date(first).weekday()) % 7  # weekday(): Monday is 0
    for day in range(monday, last + 1, size.tick_every_days):
        parts.append(f'<line class="tick-mark" x1="{x(day):.1f}" x2="{x(day):.1f}" y1="{plot_bottom}" '
                     f'y2="{plot_bottom + 5}"/>')
        label = f"{day_date(day).day} {day_date(day):%b}"
        half = len(label) * font * 0.3  # about 0.6 em a character: a label near an edge is kept inside the chart
        parts.append(f'<text class="tick" x="{min(max(x(day), half), size.width - half):.1f}" '
                     f'y="{plot_bottom + 7 + font}" text-anchor="middle">{label}</text>')
    parts.append(f'<text class="axis-title" x="{(plot_left + plot_right) / 2:.1f}" y="{size.height - 6}" '
                 f'text-anchor="middle">date (ticks on Mondays), {day_date(last).year}</text>')
    parts.append(f'<line class="origin" x1="{x(origin):.1f}" x2="{x(origin):.1f}" y1="{plot_top}" y2="{plot_bottom}"/>')
    parts.append(f'<polyline class="history" points="{points(history_days, history_units)}"/>')
    joined_days = [origin] + [int(d) for d in forecast_days]
    joined_units = [float(history_units[-1])] + [float(u) for u in forecast_units]
    parts.append(f'<polyline class="forecast" points="{points(joined_days, joined_units)}"/>')
    chosen_units = dict(zip((int(d) for d in forecast_days), forecast_units)).get(int(chosen_day), 0.0)
    parts.append(f'<circle class="chosen" cx="{x(chosen_day):.1f}" cy="{y(chosen_units):.1f}" r="5"/>')

    # One hover (and, for forecast days, keyboard focus) target per day, showing the day's value.
    for kind, days, units in (("sold", history_days, history_units), ("forecast", forecast_days, forecast_units)):
        for day, amount in zip(days, units):
            label = f"{day_date(day):%a} {day_date(day).day} {day_date(day):%b}: {format_units(amount)}"
            spoken = f"{day_date(day):%A %d %B %Y}: {kind} {format_units(amount)} units"
            focus = ' tabindex="0"' if kind == "forecast" else ""
            text_width = len(label) * font * 0.64 + 12  # bold text: about 0.6 em a character
            box_x = min(max(x(day) - text_width / 2, plot_left), plot_right - text_width)
            box_y = max(y(amount) - font * 2.4, plot_top - font * 1.6)
            parts.append(
                f'<g class="day day-{kind}"{focus} role="img" aria-label="{spoken}">'
                f'<rect class="hit" x="{x(day) - day_width / 2:.1f}" y="{plot_top}" width="{day_width:.1f}" '
                f'height="{plot_bottom - plot_top}"/>'
                f'<circle class="marker" cx="{x(day):.1f}" cy="{y(amount):.1f}" r="4"/>'
                f'<rect class="value-box" x="{box_x:.1f}" y="{box_y:.1f}" width="{text_width:.1f}" '
                f'height="{font * 1.6:.1f}" rx="3"/>'
                f'<text class="value" x="{box_x + text_width / 2:.1f}" y="{box_y + font * 1.15:.1f}" '
                f'text-anchor="middle">{label}</text></g>')

    legend_y = font + 2
    parts.append(f'<g class="legend">'
                 f'<line class="history" x1="{plot_left}" x2="{plot_left + 18}" '
                 f'y1="{legend_y - 4}" y2="{legend_y - 4}"/>'
                 f'<text x="{plot_left + 22}" y="{legend_y}">sold</text>'
                 f'<line class="forecast" x1="{plot_left + 66}" x2="{plot_left + 84}" y1="{legend_y - 4}" '
                 f'y2="{legend_y - 4}"/><text x="{plot_left + 88}" y="{legend_y}">forecast</text>'
                 f'<circle class="chosen" cx="{plot_left + 164}" cy="{legend_y - 4}" r="5"/>'
                 f'<text x="{plot_left + 174}" y="{legend_y}">your date</text></g>')
    parts.append("</svg>")
    return Markup("\n".join(parts))
