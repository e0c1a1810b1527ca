"""``promote`` (run by CI): make the evaluated candidate the production model — or refuse, saying why.

Promotes only a candidate whose evaluation passed the threshold test
(pipeline/evaluate.py: better than the baseline with confidence over the
backtest windows) *for the current bundle, code, data and params* (the
hashes ``evaluate`` recorded in results/evaluation.json are recomputed and
compared). Then:

1. installs the bundle at ``models/production/`` atomically: the evaluated model with its
   history rolled forward to the last known day, so it forecasts the days after the data
   (pipeline/serving_bundle.py);
2. in a DVC project, ``dvc add models/production`` and, when a DVC remote is
   configured, ``dvc push`` of it;
3. registers the bundle of the candidate's MLflow run as a model version
   (reused if this bundle is already registered) and moves the alias — last,
   so the registry never names a model that is not installed.

Re-running is harmless: nothing is registered or copied twice.

    python -m pipeline.promote [--root DIR]
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pipeline import registry_fetch, tracking
from pipeline.bundle import BundleError, verify_bundle
from pipeline.evaluate import CANDIDATE_DIR, EVALUATION_FILE, current_versions
from pipeline.model_params import promote_params
from pipeline.params import load_yaml
from pipeline.serving_bundle import roll_forward, source_digest
from pipeline.stage import run_stage

PRODUCTION_DIR = "models/production"
REFUSED = 3


class PromotionRefused(RuntimeError):
    """The candidate may not be promoted; the message says why and what to do."""


def check_candidate(root: Path, raw_params) -> tuple[dict, str]:
    """(evaluation, bundle digest) of a candidate that may be promoted, else PromotionRefused."""
    path = root / EVALUATION_FILE
    if not path.is_file():
        raise PromotionRefused(f"{path}: no evaluation found; run `dvc repro` (train + evaluate) first")
    try:
        evaluation = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise PromotionRefused(f"{path}: unreadable ({exc})") from None
    if evaluation.get("passed") is not True:
        reasons = "; ".join(evaluation.get("failures") or ["no verdict recorded"])
        raise PromotionRefused(f"the candidate failed its evaluation: {reasons}")
    if not isinstance(evaluation.get("improvement_interval"), dict):
        raise PromotionRefused(f"{path}: a verdict without the backtest's improvement interval (an older evaluate's); "
                               "run `dvc repro evaluate` to judge the candidate by the current threshold test")
    try:
        digest = verify_bundle(root / CANDIDATE_DIR)
    except BundleError as exc:
        raise PromotionRefused(f"the candidate bundle cannot be trusted: {exc}") from None
    if digest != evaluation.get("bundle_digest"):
        raise PromotionRefused(f"{root / CANDIDATE_DIR} changed since it was evaluated (bundle digest {digest[:12]} vs "
                               f"evaluated {str(evaluation.get('bundle_digest'))[:12]}); run `dvc repro` again")
    now = current_versions(root, raw_params)
    for key, label in (("code_version", "model code (engine/ and the pipeline modules of train/evaluate)"),
                       ("data_version", "data"),
                       ("params_version", "params (features, train, evaluate)")):
        if now[key] != evaluation.get(key):
            raise PromotionRefused(f"the {label} changed since the evaluation; run `dvc repro` to evaluate the "
                                   "current state before promoting")
    if not evaluation.get("mlflow_run_id"):
        raise PromotionRefused("the evaluation names no MLflow run for the candidate "
                               "(was it trained by pipeline.train?)")
    return evaluation, digest


def _dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    dvc = Path(sys.executable).with_name("dvc")
    command = [str(dvc) if dvc.exists() else "dvc", *args]
    return subprocess.run(command, cwd=root, capture_output=True, text=True)


def track_with_dvc(root: Path, say) -> str:
    """dvc add the production bundle and push it when a remote is configured; returns what was done."""
    if not (root / ".dvc").is_dir():
        return "not a DVC project: models/production not tracked"
    added = _dvc(root, "add", PRODUCTION_DIR)
    if added.returncode != 0:
        message = added.stderr.strip() or added.stdout.strip()
        if "git-ignored" in message:
            message += (f" (un-ignore it, e.g. .gitignore: `/models/*` and `!/{PRODUCTION_DIR}.dvc`)")
        raise PromotionRefused(f"`dvc add {PRODUCTION_DIR}` failed: {message}")
    remotes = _dvc(root, "remote", "list")
    if remotes.returncode != 0 or not remotes.stdout.strip():
        return "dvc add done; no DVC remote configured, nothing pushed"
    pushed = _dvc(root, "push", f"{PRODUCTION_DIR}.dvc")
    if pushed.returncode != 0:
        raise PromotionRefused(f"`dvc push` failed: {pushed.stderr.strip() or pushed.stdout.strip()}")
    return f"dvc add + push to the configured remote ({remotes.stdout.split()[0]})"


def run(root: Path, quiet: bool = False) -> dict:
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    raw = load_yaml(root / "params.yaml")
    pparams = promote_params(raw)
    evaluation, digest = check_candidate(root, raw)
    interval = evaluation["improvement_interval"]
    tags = {"bundle_version": str(evaluation.get("bundle_version")), "code_version": evaluation["code_version"][:16],
            "heldout_nwrmsle": f"{evaluation['candidate_nwrmsle']:.6f}",
            "heldout_improvement": f"{interval['estimate']:.6f} [{interval['low']:.6f}, {interval['high']:.6f}] "
                                   f"({interval['confidence']:.0%}, {interval['series']} series)",
            "threshold_test": "passed", "evaluation_run_id": str(evaluation.get("mlflow_evaluation_run_id"))}
    production = root / PRODUCTION_DIR
    installed = source_digest(production) == digest
    if not installed:
        roll_forward(root, root / CANDIDATE_DIR, production, digest)
    dvc_note = track_with_dvc(root, say)
    # the installed bundle goes to the registry's artifact store: the app side fetches it by alias
    tags.update(registry_fetch.publish_serving_bundle(root, evaluation["mlflow_run_id"], production))
    alias = registry_fetch.promote_alias(pparams.alias)
    # The alias moves last: it is what says "this is production" to everyone reading the registry.
    version, created = tracking.register_production(root, evaluation["mlflow_run_id"], digest, tags,
                                                    name=pparams.model_name, alias=alias)
    summary = {"model": pparams.model_name, "version": str(version.version), "alias": alias,
               "registered": created, "installed": not installed, "digest": digest, "dvc": dvc_note}
    say(f"promote: {pparams.model_name} version {version.version} "
        f"({'newly registered' if created else 'already registered'}) is now '{alias}'; "
        f"{PRODUCTION_DIR} {'installed' if not installed else 'already up to date'} ({digest[:12]}); {dvc_note}")
    return summary


def main(argv=None) -> int:
    def body(args) -> int | None:
        try:
            run(args.root)  # prints its own summary
        except PromotionRefused as exc:
            print(f"promote: refused: {exc}", file=sys.stderr)
            return REFUSED
        return None

    return run_stage("promote", body, argv, errors=(BundleError, tracking.TrackingError),
                     description=__doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
