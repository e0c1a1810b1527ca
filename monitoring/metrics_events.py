"""The evaluate stage's validation metrics as a `shelfcast.metrics` event, so Kibana shows model quality.

    python -m monitoring.metrics_events [--metrics results/metrics.json] [--evaluation results/evaluation.json]
                                        [--candidate models/candidate]

Call `emit_validation_metrics()` at the end of evaluate, or run the command after it
(`make metrics-event`). Goes to Fluentd when FLUENTD_HOST is set, else to logs/monitoring.jsonl.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Mapping

from monitoring.monitoring_events import emit_monitoring_event
from pipeline.bundle import BundleError, verify_bundle
from pipeline.stage import CommandParser, output_any_terminal_can_take, run_interruptible

TAG = "shelfcast.metrics"
DEFAULT_METRICS = Path("results/metrics.json")
DEFAULT_EVALUATION = Path("results/evaluation.json")
DEFAULT_CANDIDATE = Path("models/candidate")  # the bundle evaluate judges (pipeline/evaluate.py's CANDIDATE_DIR)


class MetricsFileError(ValueError):
    """results/metrics.json missing or not as evaluate writes it; names the file and field."""


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise MetricsFileError(f"{path}: not found (run the evaluate stage: dvc repro evaluate)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise MetricsFileError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise MetricsFileError(f"{path}: expected a JSON object")
    return data


def metrics_event(metrics: Mapping[str, Any], evaluation: Mapping[str, Any] | None, source: str = "") -> dict:
    """The event body: the overall scores (slices stay in MLflow and results/metrics.json), named by the evaluated
    bundle's name and version (``bundle_name``, ``bundle_version`` of results/evaluation.json)."""
    try:
        if "validation" in metrics:  # evaluate's layout: the validation window's scores, and the backtest's
            validation = metrics["validation"]
            metrics = {"rows": validation["rows"], "improvement_over_baseline": validation["improvement"],
                       "threshold_test_passed": metrics["threshold_test_passed"],
                       "candidate": {"nwrmsle": validation["candidate_nwrmsle"], "rmse": validation["candidate_rmse"]},
                       "baseline": {"nwrmsle": validation["baseline_nwrmsle"], "rmse": validation["baseline_rmse"]}}
        candidate, baseline = metrics["candidate"], metrics["baseline"]
        body = {
            "rows": int(metrics["rows"]),
            "candidate_nwrmsle": float(candidate["nwrmsle"]), "candidate_rmse": float(candidate["rmse"]),
            "baseline_nwrmsle": float(baseline["nwrmsle"]), "baseline_rmse": float(baseline["rmse"]),
            "improvement_over_baseline": float(metrics["improvement_over_baseline"]),
            "threshold_test_passed": bool(metrics["threshold_test_passed"]),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise MetricsFileError(f"{source or 'metrics'}: missing or malformed field {exc}") from None
    evaluation = evaluation or {}
    return {"kind": "validation_metrics", "model_name": evaluation.get("bundle_name") or "unknown",
            "model_version": evaluation.get("bundle_version") or "unknown", "metrics": body}


def with_judged_bundle_names(evaluation: Mapping[str, Any], candidate: Path) -> dict:
    """``evaluation`` with ``bundle_name``/``bundle_version`` it lacks (an evaluation.json written before evaluate
    recorded them) taken from the bundle it judged: ``candidate``'s bundle.json, when that bundle's digest is the
    evaluation's ``bundle_digest``. A bundle retrained since, damaged or absent tells nothing: they stay unknown."""
    evaluation = dict(evaluation)
    if evaluation.get("bundle_name") and evaluation.get("bundle_version"):
        return evaluation
    try:
        if not evaluation.get("bundle_digest") or verify_bundle(candidate) != evaluation["bundle_digest"]:
            return evaluation
        metadata = json.loads((candidate / "bundle.json").read_text(encoding="utf-8"))
    except (BundleError, OSError, ValueError, RecursionError):
        return evaluation
    if isinstance(metadata, dict):
        for field, key in (("bundle_name", "name"), ("bundle_version", "version")):
            if not evaluation.get(field) and isinstance(metadata.get(key), str):
                evaluation[field] = metadata[key]
    return evaluation


def emit_validation_metrics(metrics_path: Path | str = DEFAULT_METRICS,
                            evaluation_path: Path | str | None = DEFAULT_EVALUATION,
                            candidate_path: Path | str = DEFAULT_CANDIDATE) -> str:
    """Emit the metrics file as one event; returns where it went."""
    metrics_path = Path(metrics_path)
    evaluation = None
    if evaluation_path is not None and Path(evaluation_path).is_file():
        evaluation = with_judged_bundle_names(_read_json(Path(evaluation_path)), Path(candidate_path))
    return emit_monitoring_event(TAG, metrics_event(_read_json(metrics_path), evaluation, str(metrics_path)))


def main(argv=None) -> int:
    """Ctrl-C and SIGTERM (a Fluentd that does not answer) end it as they end a stage: the one line and 130 / 143
    (run_interruptible), not a KeyboardInterrupt traceback; a stdout whose reader has gone, one line and 141."""
    return run_interruptible("metrics-event", lambda: _metrics_event(argv))


def _metrics_event(argv) -> int:
    output_any_terminal_can_take()
    parser = CommandParser(prog="python -m monitoring.metrics_events", description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", type=Path, default=DEFAULT_METRICS)
    parser.add_argument("--evaluation", type=Path, default=DEFAULT_EVALUATION)
    parser.add_argument("--candidate", type=Path, default=DEFAULT_CANDIDATE,
                        help="the bundle the evaluation judged: its name and version when the evaluation lacks them")
    args = parser.parse_args(argv)
    try:
        where = emit_validation_metrics(args.metrics, args.evaluation, args.candidate)
    except ValueError as exc:  # MetricsFileError, or a malformed FLUENTD_HOST/PORT/TIMEOUT: one line, named
        print(f"metrics-event: error: {exc}", file=sys.stderr)
        return 2
    print(f"metrics-event: {TAG} sent to {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
