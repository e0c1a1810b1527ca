"""The drift report as one self-contained HTML page: tables plus inline SVG bar charts, no scripts, no CDN."""

from __future__ import annotations

from html import escape
from typing import Any, Mapping, Sequence

from monitoring.drift_analysis import ROLE_UNWEIGHTED
from pipeline.drift_stats import ROLE_CALENDAR

CHART_WIDTH, CHART_HEIGHT = 360, 120
# The first and last bins' names under a chart, each in half its width at 10 px (about 6 px a character): a longer
# name is cut with an ellipsis there (in full in the chart's text alternative and each bar's title). Two long names,
# a family of 500 characters from the user's items.csv, were drawn over each other and past the chart's edges.
AXIS_LABEL_CHARS = 28
# Also the colours of the words "reference" and "live" in each table's head, so each has 4.5:1 contrast or more on
# the white page (WCAG 2.1 AA for text; the bars get 3:1 and more): #8aa4c8 and #e07b39 had 2.55:1 and 2.97:1.
TRAIN_COLOUR, LIVE_COLOUR = "#4a6b9b", "#b35309"


def share_chart_svg(title: str, labels: Sequence[str], train: Sequence[float], live: Sequence[float]) -> str:
    """Paired bars per bin: reference share (left) vs live share (right). Its text alternative (the image's name)
    holds every bin's two shares: the bars' own titles are hidden inside an image from assistive technology, so it
    had said only the feature's name."""
    count = max(len(labels), 1)
    top = max([*train, *live, 1e-9])
    slot = CHART_WIDTH / count
    bar = max(slot / 2 - 1, 1)
    shares = "; ".join(f"{label} {t:.3f} vs {v:.3f}" for label, t, v in zip(labels, train, live))
    spoken = escape(f"{title}: share per bin, reference vs live: {shares}")
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{CHART_WIDTH}" height="{CHART_HEIGHT + 16}" '
             f'role="img" aria-label="{spoken}"><title>{escape(title)}</title>']
    for i, label in enumerate(labels):
        for j, (value, colour) in enumerate(((train[i], TRAIN_COLOUR), (live[i], LIVE_COLOUR))):
            height = CHART_HEIGHT * value / top
            x = i * slot + j * bar
            parts.append(f'<rect x="{x:.1f}" y="{CHART_HEIGHT - height:.1f}" width="{bar:.1f}" height="{height:.1f}" '
                         f'fill="{colour}"><title>{escape(str(label))}: {"train" if j == 0 else "live"} '
                         f'{value:.3f}</title></rect>')
    parts.append(f'<line x1="0" y1="{CHART_HEIGHT}" x2="{CHART_WIDTH}" y2="{CHART_HEIGHT}" stroke="#555"/>')
    first_label = escape(_axis_label(labels[0]) if labels else "")
    parts.append(f'<text x="0" y="{CHART_HEIGHT + 13}" font-size="10">{first_label}</text>')
    if len(labels) > 1:
        parts.append(f'<text x="{CHART_WIDTH}" y="{CHART_HEIGHT + 13}" font-size="10" text-anchor="end">'
                     f'{escape(_axis_label(labels[-1]))}</text>')
    parts.append("</svg>")
    return "".join(parts)


# Which bar is which, said by place as well as by colour (WCAG 1.4.1): the forecast table's head had "reference ▮
# vs live ▮" in black, the colour the only cue.
CHART_LEGEND = (f"<span style='color:{TRAIN_COLOUR}'>reference</span> (left bar) vs "
                f"<span style='color:{LIVE_COLOUR}'>live</span> (right bar)")


def _axis_label(label: object) -> str:
    text = str(label)
    return text if len(text) <= AXIS_LABEL_CHARS else text[:AXIS_LABEL_CHARS - 1] + "…"


def _number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return escape(str(value))


VERDICT_HTML = {"drift": '<b class="bad">drift</b>', "inconclusive": "<i>inconclusive</i>",
                "not alarmed": "not alarmed", "ok": "ok"}


def _shift_rows(records: Mapping[str, Mapping[str, Any]], unseen: Mapping[str, float] | None = None) -> str:
    rows = []
    for name, record in sorted(records.items(), key=lambda item: -item[1]["psi"]):
        bins = record["bins"]
        verdict = record.get("verdict", "drift" if record["drifted"] else "ok")
        flag = VERDICT_HTML.get(verdict, escape(verdict))
        if record.get("note") and (verdict != "not alarmed" or record.get("role") == ROLE_UNWEIGHTED):
            flag += f"<br><small>{escape(record['note'])}</small>"
        extra = f"<td>{unseen.get(name, 0.0):.1%}</td>" if unseen is not None else ""
        rows.append(f"<tr><td>{escape(name)}</td><td>{record['psi']:.3f}</td><td>{record['test']}</td>"
                    f"<td>{record['statistic']:.3g}</td><td>{record['p_value']:.3g}</td>{extra}<td>{flag}</td>"
                    f"<td>{share_chart_svg(name, bins['labels'], bins['train'], bins['live'])}</td></tr>")
    return "".join(rows)


def _reference_html(report: Mapping[str, Any]) -> str:
    reference = report.get("reference") or {}
    if reference.get("kind") == "served":
        dates = reference.get("horizon_dates") or ["?", "?"]
        forecasts = (report.get("prediction") or {}).get("reference")
        text = (f"Reference: the features of the requests this bundle serves — every store × item of its snapshot at "
                f"origin {escape(str(reference.get('origin')))}, on each day {escape(str(dates[0]))} … "
                f"{escape(str(dates[-1]))} ({_number(reference.get('rows'))} rows sampled); the promotion "
                "flag as in the training rows where it was known."
                + (" History features are compared at the requests' horizon days (each day's reference weighted "
                   "by its share of the requests)." if reference.get("history_by_horizon") else "")
                + (f" Forecasts are compared with the model's {escape(str(forecasts))}." if forecasts else ""))
    else:
        text = f"Reference: the training rows. {escape(str(reference.get('note', '')))}"
    if reference.get("forecast_note"):
        text += f" Note: {escape(reference['forecast_note'])}."
    return f'<p id="drift-reference">{text}</p>'


def _set_aside_html(report: Mapping[str, Any]) -> str:
    set_aside = report.get("set_aside") or {}
    parts = []
    if set_aside.get("events"):
        counts = ", ".join(f"{escape(label)} ({n})" for label, n in sorted(set_aside["by_model"].items()))
        parts.append(f"{set_aside['events']} events set aside, {escape(str(set_aside.get('reason', '')))}: {counts}.")
    if set_aside.get("not_predictions"):
        counts = ", ".join(f"{escape(sender)} ({n})" for sender, n in sorted(set_aside["not_predictions"].items()))
        parts.append(f"Records that are not prediction events, skipped: {counts}.")
    return f'<p id="drift-set-aside">{" ".join(parts)}</p>' if parts else ""


def _scrolling_table(label: str, rows: str) -> str:
    """A table in a box of its own that scrolls sideways when the window is narrower (a phone: the page itself never
    does) and takes the keyboard's focus, so it scrolls with the arrow keys; ``label`` names it to a screen reader."""
    return f'<div class="scroll" tabindex="0" role="region" aria-label="{escape(label)}"><table>{rows}</table></div>'


def _new_series_html(report: Mapping[str, Any]) -> str:
    """Requests for a store×item the bundle has no history of (events' new_series); a report made before: nothing."""
    new = report.get("new_series") or {}
    if not new.get("events"):
        return ""
    return (f"<p>Requests for a store×item with no rows in the bundle's history: {new['share']:.1%} "
            f"({new['events']} events), forecast from an empty history and left out of the history features' and "
            "the forecasts' comparison.</p>")


def render_report(report: Mapping[str, Any]) -> str:
    status = report["status"]
    banner = {"drift": "Drift alarm", "ok": "No drift above the thresholds",
              "insufficient_data": "Too few events for a verdict"}[status]
    reasons = "".join(f"<li>{escape(r)}</li>" for r in report["reasons"]) or "<li>none</li>"
    model = report["model"]
    prediction = ""
    if report.get("prediction"):
        compared_with = report["prediction"].get("reference")
        prediction = ("<h2>Forecast distribution</h2>"
                      + (f"<p>Compared with: {escape(compared_with)}.</p>" if compared_with else "")
                      + _scrolling_table("Forecast distribution", "<tr><th>output</th><th>PSI</th><th>test</th>"
                                         "<th>statistic</th><th>p-value</th><th>verdict</th>"
                                         f"<th>{CHART_LEGEND}</th></tr>"
                                         + _shift_rows({"forecast units": report["prediction"]})))
    live = report.get("live")
    live_html = ""
    if live is not None:
        versus = ""
        if live.get("ratio_to_baseline") is not None:
            low, high = ("∞" if end is None else _number(end) for end in live["ratio_interval"])
            versus = (f"; the weekday baseline's on the same rows {_number(live['baseline_nwrmsle'])} (ratio "
                      f"{_number(live['ratio_to_baseline'])}, 95% interval {low} … {high})")
            if live.get("closed_rows"):  # the note, which says so too, is shown only where there is no ratio
                versus += (f"; {live['closed_rows']} closed-day answer(s) left out (0 units by the closed-day rule, "
                           "not the model)")
        elif live.get("note"):
            versus = f"; {escape(live['note'])}"
        asked = live.get("events", live["rows"])  # a request asked again is scored once (drift_analysis.live_accuracy)
        again = f" ({asked} events: a request asked again is scored once)" if asked > live["rows"] else ""
        live_html = (f"<h2>Live accuracy</h2><p>NWRMSLE {_number(live['nwrmsle'])} over {live['rows']} forecasts "
                     f"with known sales{again}{versus}.</p>")
    calendar = {n: r for n, r in report["features"].items() if r.get("role") == ROLE_CALENDAR}
    alarmable = {n: r for n, r in report["features"].items() if r.get("role") != ROLE_CALENDAR}
    versions = ", ".join(f"{escape(k)} ({v})" for k, v in sorted(report["served_model_versions"].items())) or "–"
    head = ("<tr><th>feature</th><th>PSI</th><th>test</th><th>statistic</th><th>p-value</th>{}<th>verdict</th>"
            f"<th>{CHART_LEGEND}</th></tr>")
    categorical_rows = _shift_rows(report['categorical'], report['unseen'])
    calendar_reason = escape(str(report.get('not_alarmed', {}).get('reason', '')))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Shelfcast drift report</title>
<style>
body{{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}} table{{border-collapse:collapse;margin-bottom:1.5rem}}
td,th{{border-bottom:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:middle}}
.status{{padding:.5rem 1rem;border-radius:4px;display:inline-block}} .drift{{background:#fbd5d5}}
.ok{{background:#d5f5dd}} .insufficient_data{{background:#eee}} .bad{{color:#b00}}
body{{overflow-wrap:break-word}} .scroll{{overflow-x:auto;max-width:100%;margin-bottom:1.5rem}}
.scroll table{{margin:0}}
.scroll:focus-visible{{outline:3px solid #9cc2ff;outline-offset:2px}}
@media (max-width:600px){{body{{margin:.75rem}}}}
</style></head><body><main>
<h1>Shelfcast drift report</h1>
<p class="status {status}" id="drift-status">{banner}</p>
<p>Model {escape(str(model.get('name')))} {escape(str(model.get('version')))}
(training rows {_number(model.get('training_rows'))}); {report['events']} events from
{escape(str(report['source']))}, {escape(str(report['window']['first']))} … {escape(str(report['window']['last']))};
served versions: {versions}. Generated {escape(report['generated_at'])}.</p>
{_set_aside_html(report)}
{_reference_html(report)}
<h2>Reasons</h2><ul>{reasons}</ul>
<p>Requests with any category unseen in training: {report['unseen'].get('any', 0.0):.1%}.</p>
{_new_series_html(report)}
{prediction}{live_html}
<h2>Categorical inputs</h2>{_scrolling_table("Categorical inputs", head.format('<th>unseen</th>') + categorical_rows)}
<h2>Dense features</h2>{_scrolling_table("Dense features", head.format('') + _shift_rows(alarmable))}
<h2>Calendar features (not alarmed)</h2><p id="calendar-reason">{calendar_reason}.</p>
{_scrolling_table("Calendar features", head.format('') + _shift_rows(calendar))}
</main></body></html>
"""
