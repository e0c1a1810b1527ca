"""`dvc plots show` as a user runs it: the page needs no network, and the daily plot draws its dates.

The project's real plot definitions (dvc.yaml ``plots:``), templates and
``.dvc/config`` are copied into a fresh DVC project with plot files written by
evaluate's own writer; the page DVC renders is then opened in headless
Chromium with every network request refused.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import evaluate
from tests.e2e.webdriver import find_chromium
from pipeline.backtest import WindowScores
from pipeline.model_params import EvaluateParams, SliceBound

REPO = Path(__file__).resolve().parents[2]
DVC = Path(sys.executable).with_name("dvc")


def _window(index: int, first_day: int, rng) -> WindowScores:
    day = np.repeat(np.arange(first_day, first_day + 16), 5)
    actual = rng.poisson(20, day.size).astype(float)
    return WindowScores(index=index, first_day=first_day, last_day=first_day + 15, series=np.tile(np.arange(5), 16),
                        day=day, actual=actual, candidate=actual * 0.7 + 1, baseline=actual * 0.6 + 2,
                        weights=np.ones(day.size), model="test", expected=actual * 1.02)


@pytest.fixture(scope="module")
def plots_page(tmp_path_factory) -> Path:
    if not DVC.exists():
        pytest.skip("dvc CLI not installed in this environment")
    root = tmp_path_factory.mktemp("plots") / "project"
    root.mkdir()
    subprocess.run([str(DVC), "init", "--no-scm", "-q"], cwd=root, check=True, capture_output=True)
    (root / ".dvc" / "plots").mkdir(exist_ok=True)
    with open(root / ".dvc" / "config", "a", encoding="utf-8") as config:  # the project's [plots] section
        plots_section = (REPO / ".dvc" / "config").read_text(encoding="utf-8").split("[plots]", 1)[1]
        config.write(plots_section.join(["[plots]", ""]))
    for name in ("offline_plots.html", "plots/daily_units.json"):
        shutil.copy(REPO / ".dvc" / name, root / ".dvc" / name)
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    (root / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}, sort_keys=False))
    rng = np.random.default_rng(0)
    latest = _window(0, int(np.datetime64("2017-07-31", "D").astype(np.int64)), rng)
    windows = [latest, _window(1, latest.first_day - 16, rng), _window(2, latest.first_day - 32, rng)]
    params = EvaluateParams(backtest_windows=3, min_improvement=0.0, min_series=30, confidence=0.95,
                            bootstrap_resamples=100,
                            max_nwrmsle=None, slice_bound=SliceBound(1.0, 10), plot_rows=50, seed=0)
    evaluate._write_plots(root, windows, np.array(["DAIRY"] * latest.rows), params)
    shown = subprocess.run([str(DVC), "plots", "show", "-o", "out"], cwd=root, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    return root / "out" / "index.html"


def test_the_plots_page_loads_nothing_from_the_network(plots_page):
    page = plots_page.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]*\bsrc=", page), "a script is loaded from somewhere"
    assert "cdn.jsdelivr" not in page and "<link" not in page
    for library in ("vega@5.20.2", "vega-lite@5.2.0", "vega-embed@6.18.2"):
        assert f"/* {library} */" in page
    assert page.count("vegaEmbed('#") == 2  # daily units and predicted-vs-actual


def test_the_daily_plot_reads_dates_as_time(plots_page):
    page = plots_page.read_text(encoding="utf-8")
    specs = [json.loads(s) for s in re.findall(r"var spec = (\{.*\});", page)]
    daily = next(s for s in specs if s["encoding"]["x"]["field"] == "date")
    assert daily["encoding"]["x"]["type"] == "temporal"
    dates = {row["date"] for row in daily["data"]["values"]}
    assert len(dates) == 48 and all(np.datetime64(d, "D") for d in dates)  # three back-to-back windows


def test_offline_chromium_draws_every_daily_line_in_full(plots_page, tmp_path):
    """The page as DVC wrote it, in a browser that may reach nothing: each series is a line over all 48 days."""
    browser = find_chromium()
    if browser is None:
        pytest.skip("Chromium not installed (scripts/install_browser.sh installs it)")
    page = plots_page.read_text(encoding="utf-8")
    daily = next(s for s in re.findall(r"var spec = (\{.*\});", page) if '"field": "date"' in s)
    # DVC's page draws to canvas; the check re-embeds the daily spec as SVG with the page's own inlined libraries
    body, end = page.rsplit("</body>", 1)  # the last one: vega-embed's source holds the text "</body>" too
    check = body + f"""
<div id="check"></div>
<script>
vegaEmbed('#check', {daily}, {{renderer: 'svg', actions: false}}).then(function (result) {{
  var lines = Array.from(document.querySelectorAll('#check .mark-line path'));
  document.title = 'CHECK ' + JSON.stringify(lines.map(function (p) {{
    var d = p.getAttribute('d') || ''; return {{points: (d.match(/[ML]/g) || []).length, nan: d.indexOf('NaN') >= 0}};
  }}));
}}).catch(function (e) {{ document.title = 'CHECK ERROR ' + e; }});
</script>
</body>""" + end
    (tmp_path / "check.html").write_text(check, encoding="utf-8")
    dumped = subprocess.run(
        [browser, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--proxy-server=http://127.0.0.1:9",
         "--proxy-bypass-list=<-loopback>", "--virtual-time-budget=20000", "--dump-dom",
         (tmp_path / "check.html").as_uri()], capture_output=True, text=True, timeout=120)
    title = re.search(r"<title>CHECK (.*?)</title>", dumped.stdout)
    assert title, f"the check never ran: {dumped.stderr[-2000:]}"
    lines = json.loads(title.group(1))
    assert len(lines) == 4, lines  # actual, expected units, predicted (median-like), baseline
    assert all(line["points"] == 48 and not line["nan"] for line in lines), lines
