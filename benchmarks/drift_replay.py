"""Live accuracy through the app on a project's own validation window (README "Monitoring", *The forecasts and
live accuracy*): real requests in, `monitoring.drift --actuals` out, as served and with known faults.

Samples ``--requests`` rows of the project's validation split (items the bundle knows), serves them through the
real app (Flask's test client; events to a JSON-lines log), then runs the drift report with the project's raw
``train.csv`` as actuals for four cases: the forecasts as served, every forecast 3 units, every forecast x1.6,
and every actual sale doubled. Prints each case's live NWRMSLE, the baseline's, their ratio with its interval, and
whether drift alarmed (exit 1).

    python benchmarks/drift_replay.py --project DIR [--bundle DIR] [--requests 3000] [--seed 0] [--out DIR]

Needs a project that ran `dvc repro` (data/split/validation.parquet, data/raw/train.csv[.gz], models/candidate).
The tests (tests/monitoring/conftest.py) use the two replay functions below on their tiny project.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]


def served_validation_requests(bundle: Path, n: int | None, seed: int = 0, first_days: int | None = None,
                               project: Path | None = None) -> list[dict[str, Any]]:
    """`n` real requests (None: all) for the bundle's window: rows of `project`'s validation split (default: the
    project the bundle lies in, PROJECT/models/NAME), items it knows; with `first_days`, only for the window's first
    days (a client ordering for the next days)."""
    import pandas as pd

    rows = pd.read_parquet(validation_split(bundle.parents[1] if project is None else project))
    known = set(json.loads((bundle / "bundle.json").read_text(encoding="utf-8"))["vocabularies"]["item_nbr"])
    rows = rows[rows["item_nbr"].astype(str).isin(known)]
    if first_days is not None:
        rows = rows[rows["date"] < rows["date"].min() + pd.Timedelta(days=first_days)]
    rows = rows.sample(n=n or len(rows), random_state=seed)
    return [{"store_nbr": int(r.store_nbr), "item_nbr": int(r.item_nbr), "date": r.date.date().isoformat(),
             "onpromotion": bool(r.onpromotion)} for r in rows.itertuples()]


def validation_split(project: Path) -> Path:
    return project / "data" / "split" / "validation.parquet"


def replay_requests(bundle: Path, requests: list[dict[str, Any]], log_path: Path) -> Path:
    """Serve `requests` through the real app; its events go to `log_path` (the app's JSON-lines sink)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from app import create_app
    from app.config import AppSettings
    from app.events import PredictionEventSink

    sink = PredictionEventSink.from_environment({"SHELFCAST_PREDICTION_LOG": str(log_path)})
    client = create_app(AppSettings(model_dir=bundle, reload_interval_s=0), sink=sink).test_client()
    for start in range(0, len(requests), 200):
        answer = client.post("/api/v1/predict", json={"instances": requests[start:start + 200]})
        if answer.status_code != 200:  # e.g. models/production: promote's refit forecasts the days after the window
            body = answer.get_json(silent=True) or {}
            first = next(iter(body.get("errors") or []), {}).get("message", "")
            raise SystemExit(f"{bundle}: the app answered {answer.status_code} to the validation window's requests "
                             f"({body.get('message')}: {first}); replay the bundle evaluate judged on that window, "
                             "the project's models/candidate")
    sink.close()
    return log_path


def with_outputs(log: Path, out: Path, change: Callable[[dict], None]) -> Path:
    """A copy of the event log with each event's ``output`` changed."""
    with log.open(encoding="utf-8") as source, out.open("w", encoding="utf-8") as target:
        for line in source:
            event = json.loads(line)
            change(event["output"])
            target.write(json.dumps(event) + "\n")
    return out


def doubled_sales(train_csv: Path, out: Path) -> Path:
    opener = gzip.open if train_csv.name.endswith(".gz") else open
    with opener(train_csv, "rt", encoding="utf-8", newline="") as source, \
            out.open("w", encoding="utf-8", newline="") as target:
        writer = csv.writer(target)
        writer.writerow(["store_nbr", "item_nbr", "date", "unit_sales"])
        for row in csv.DictReader(source):
            writer.writerow([row["store_nbr"], row["item_nbr"], row["date"], float(row["unit_sales"]) * 2])
    return out


def drift(project: Path, bundle: Path, events: Path, actuals: Path, out: Path) -> tuple[int, dict]:
    """Run the drift report; (its exit status, its live accuracy)."""
    done = subprocess.run([sys.executable, "-m", "monitoring.drift", "--bundle", str(bundle), "--events",
                           str(events), "--actuals", str(actuals), "--params", str(project / "params.yaml"),
                           "--output-dir", str(out)], cwd=REPO, capture_output=True, text=True)
    if done.returncode not in (0, 1):
        raise SystemExit(f"drift failed ({done.returncode}): {done.stderr.strip()}")
    report = json.loads((out / "drift.json").read_text(encoding="utf-8"))
    return done.returncode, report.get("live") or {}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--project", type=Path, required=True, help="a project that ran dvc repro")
    parser.add_argument("--bundle", type=Path, help="the bundle to serve (default: PROJECT/models/candidate)")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="where the logs and reports go (default: a temporary folder)")
    args = parser.parse_args(argv)
    project = args.project.resolve()
    bundle = (args.bundle or project / "models" / "candidate").resolve()
    train_csv = next((p for p in (project / "data" / "raw" / n for n in ("train.csv.gz", "train.csv")) if p.exists()),
                     None)
    if train_csv is None:
        raise SystemExit(f"{project}/data/raw: no train.csv[.gz] (run dvc repro first)")
    if not validation_split(project).is_file():
        raise SystemExit(f"{validation_split(project)}: not found (run dvc repro first)")
    if not (bundle / "bundle.json").is_file():
        raise SystemExit(f"{bundle}: no model bundle here (run dvc repro first, or pass --bundle)")
    with tempfile.TemporaryDirectory(prefix="shelfcast-drift-replay-") as tmp:
        out = (args.out or Path(tmp)).resolve()
        out.mkdir(parents=True, exist_ok=True)
        served = replay_requests(bundle, served_validation_requests(bundle, args.requests, args.seed, project=project),
                                 out / "served.jsonl")
        cases = {
            "as served": (served, train_csv),
            "every forecast 3 units": (with_outputs(served, out / "three.jsonl",
                                                    lambda o: o.update(unit_sales=3.0)), train_csv),
            "every forecast x1.6": (with_outputs(served, out / "x1.6.jsonl",
                                                 lambda o: o.update(unit_sales=o["unit_sales"] * 1.6)), train_csv),
            "actual sales doubled": (served, doubled_sales(train_csv, out / "doubled.csv")),
        }
        print(f"drift replay: {args.requests:,} validation-window requests of {project} through the app "
              f"(seed {args.seed}), actuals {train_csv.name}")
        print("| case | rows | series | NWRMSLE | baseline | ratio [95 %] | drift alarmed |")
        print("|---|---|---|---|---|---|---|")
        for k, (name, (events, actuals)) in enumerate(cases.items()):
            status, live = drift(project, bundle, events, actuals, out / f"report-{k}")
            score, baseline, ratio = (float(live.get(k) or "nan") for k in ("nwrmsle", "baseline_nwrmsle",
                                                                             "ratio_to_baseline"))
            low, high = live.get("ratio_interval") or (float("nan"), float("nan"))
            print(f"| {name} | {live.get('rows')} | {live.get('series')} | {score:.3f} | {baseline:.3f} | "
                  f"{ratio:.3f} [{low:.3f}, {high:.3f}] | {'yes' if status == 1 else 'no'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
