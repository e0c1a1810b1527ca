"""Champion/challenger: before ``promote`` registers a candidate, it must not be worse than the production model.

``evaluate`` gates a candidate against the weekday baseline only, so a model that beats the baseline but
not production (a linear model after an MLP) passed and was promoted. Here both are scored on the
candidate's validation window, each through its own bundle (feature spec, vocabularies, graph) and
evaluate's serving path (``validation_window``), and the candidate's improvement over production,
1 - NWRMSLE(candidate) / NWRMSLE(production), gets the threshold test's paired bootstrap over series
(``evaluate.confidence``, ``evaluate.bootstrap_resamples``, ``evaluate.seed``). Refused when the interval's
upper bound is below ``-promote.max_regression``: worse with confidence.

Production's bundle is the one installed at models/production when its digest is the registered one,
else the registry's copy. Its snapshot ends at its own origin (rolled forward when promoted), so it is
given the snapshot train would ship at the candidate's origin, with production's own history length
and horizon, from the current history. Only the window's days both can be judged on count: those after
production's own training data and within its horizon. A production model that still cannot be scored (a
bundle this code cannot read or fetch, a window wholly past its horizon or inside its training data) is said
in one line, and the baseline gate alone
decides. Not a DVC stage: registry state never reaches dvc.lock or results/.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pandas as pd

from pipeline import registry_fetch, tracking
from pipeline.backtest import VALIDATION_DATA
from pipeline.bundle import BundleError, ModelBundle, load_bundle, verify_bundle
from pipeline.evaluate import CANDIDATE_DIR, EvaluateError, read_validation, scoreable_rows, validation_window
from pipeline.features import FeatureInputError
from pipeline.history import HistoryError, future_calendar, load_history, snapshot_at
from pipeline.metrics import ImprovementInterval, MetricInputError, improvement_interval, improvement_words, nwrmsle
from pipeline.model_params import EvaluateParams, evaluate_params, promote_params, train_params
from pipeline.train import HOLIDAYS_DATA, TRAIN_DATA

COMPARED, NO_PRODUCTION, SAME_BUNDLE, UNSCORABLE = "compared", "no production", "already production", "unscorable"
REFUSED = "refused: worse than production"  # on the candidate's training run only: nothing is registered
TAG = "champion_challenger"  # model version and training run tags: TAG, then TAG + "_<figure>"


class WorseThanProduction(RuntimeError):
    """The candidate is worse than the production model with confidence; the message names the param and figures,
    ``comparison`` holds them (status REFUSED) for the candidate's training run."""

    def __init__(self, message: str, comparison: "Comparison"):
        super().__init__(message)
        self.comparison = comparison


class Unscorable(ValueError):
    """The production model cannot forecast the candidate's window (the message says why)."""


@dataclass(frozen=True)
class Comparison:
    status: str  # COMPARED, NO_PRODUCTION, SAME_BUNDLE, UNSCORABLE or REFUSED
    note: str  # the line promote prints
    production_version: str | None = None
    candidate_nwrmsle: float | None = None
    production_nwrmsle: float | None = None
    interval: ImprovementInterval | None = None
    rows: int = 0
    production_snapshot: str = ""  # whose history production forecast from

    def to_json(self) -> dict:
        """promote's result: every field, the interval as evaluate writes one."""
        out = dataclasses.asdict(self)
        out["interval"] = None if self.interval is None else self.interval.to_json()
        return out

    def tags(self) -> dict[str, str]:
        """The release history's record: what the version was compared with, and the figures."""
        tags = {TAG: self.status, f"{TAG}_note": self.note[:4000]}
        if self.production_version is not None:
            tags[f"{TAG}_production_version"] = self.production_version
        if self.interval is not None:
            i = self.interval
            tags.update({f"{TAG}_candidate_nwrmsle": f"{self.candidate_nwrmsle:.6f}",
                         f"{TAG}_production_nwrmsle": f"{self.production_nwrmsle:.6f}",
                         f"{TAG}_improvement": f"{i.estimate:.6f} [{i.low:.6f}, {i.high:.6f}] "
                                               f"({i.confidence:.0%}, {i.series} series, {self.rows} rows)"})
        return tags


def _day(day_number: int) -> str:
    return str(np.datetime64(int(day_number), "D"))


def at_origin(root: Path, bundle: ModelBundle, origin_day: int) -> ModelBundle:
    """``bundle`` with the snapshot train would ship at ``origin_day`` for its spec, from the current history."""
    spec = bundle.spec
    history = load_history([root / TRAIN_DATA], days=spec.history_days)
    if history.last_day != origin_day:
        raise Unscorable(f"{TRAIN_DATA} ends on {_day(history.last_day)}, not on the candidate's origin "
                         f"{_day(origin_day)}")
    calendar = future_calendar(root / HOLIDAYS_DATA, history.stores["store_nbr"], origin_day + 1, spec.horizon)
    return dataclasses.replace(bundle, snapshot=snapshot_at(history, history.days - 1, spec.history_days, calendar))


def _on_days(frame: pd.DataFrame, keep: np.ndarray, whose: str, none_left: str,
             narrowed: str) -> tuple[pd.DataFrame, str]:
    """The rows ``keep`` marks, with ``whose`` saying the comparison was narrowed; Unscorable when none are left."""
    if not keep.any():
        raise Unscorable(none_left)
    if keep.all():
        return frame, whose
    return frame[keep].reset_index(drop=True), whose + narrowed


def compare(root: Path, candidate: ModelBundle, production: ModelBundle, eparams: EvaluateParams,
            baseline_weeks: int) -> tuple[float, float, ImprovementInterval, int, str]:
    """(candidate NWRMSLE, production NWRMSLE, improvement interval, rows, production's snapshot) on the
    validation rows both can forecast."""
    path = root / VALIDATION_DATA
    frame, _ = scoreable_rows(read_validation(path), candidate, path)
    whose = "its own snapshot"
    if production.snapshot.origin_day != candidate.snapshot.origin_day:
        whose = f"the current history at the candidate's origin ({production.spec.history_days} days)"
        production = at_origin(root, production, candidate.snapshot.origin_day)
    frame, _ = scoreable_rows(frame, production, path)
    # Production's weights saw every day up to its own training origin (a rolled-forward bundle records it as
    # evaluated_forecast_origin): a candidate's window that starts earlier (split.validation_days raised, the data
    # cut back) holds days production was fitted on, where it would look better than it is. Both are scored on the
    # days after it only.
    trained_through = np.datetime64(production.metadata.get("evaluated_forecast_origin",
                                                            production.metadata["forecast_origin"]), "D")
    frame, whose = _on_days(frame, frame["date"].to_numpy(dtype="datetime64[D]") > trained_through, whose,
                            f"production was trained on every day of the candidate's validation window (its "
                            f"training data ends on {trained_through})",
                            f", on the days after its training data (which ends on {trained_through})")
    # A production with a shorter horizon (features.horizon changed since) forecasts the window's first days only:
    # compared on those rather than not at all (the baseline gate alone let a worse candidate through).
    last_day = np.datetime64(int(production.snapshot.calendar_days[-1]), "D")
    frame, whose = _on_days(frame, frame["date"].to_numpy(dtype="datetime64[D]") <= last_day, whose,
                            f"no day of the candidate's validation window is within production's horizon "
                            f"({production.spec.horizon} days, to {last_day})",
                            f", on the days within its {production.spec.horizon}-day horizon (to {last_day})")
    challenger = validation_window(root, candidate, frame, baseline_weeks)
    # production's baseline is not compared with: asked for over the candidate's recipe's weeks, a production with
    # a shorter history (other features) could not give it (ValueError). The weeks it holds are as good as any.
    champion = validation_window(root, production, frame, min(baseline_weeks, production.spec.history_days // 7))
    interval = improvement_interval(challenger.series, challenger.actual, challenger.candidate, champion.candidate,
                                    challenger.weights, confidence=eparams.confidence,
                                    resamples=eparams.bootstrap_resamples, seed=eparams.seed)
    return (nwrmsle(challenger.actual, challenger.candidate, challenger.weights),
            nwrmsle(challenger.actual, champion.candidate, challenger.weights), interval, challenger.rows, whose)


def production_bundle(root: Path, version, installed: Path, scratch: Path) -> ModelBundle:
    """The production version's bundle: the installed copy when it is the registered one, else the registry's."""
    want = (version.tags or {}).get(registry_fetch.TAG_DIGEST)
    if not want:
        raise Unscorable(f"version {version.version} has no {registry_fetch.TAG_DIGEST} tag: registered by hand, "
                         "not by pipeline.promote, it has no serving bundle to fetch")
    try:
        if verify_bundle(installed) == want:
            return load_bundle(installed)
    except BundleError:
        pass  # not installed here, or damaged: the registry has it
    into = scratch / "production"
    registry_fetch.download_version(root, version, into)
    return load_bundle(into)


def challenge(root: Path, home: Path, raw: Mapping, candidate_digest: str, installed: Path,
              say: Callable[[str], None] = lambda _: None) -> Comparison:
    """The candidate (``home``'s) against the registry's production version; WorseThanProduction when the rule
    refuses it. ``say`` is told when the scoring starts: both models forecast the whole validation window, which at
    Favorita's size takes minutes, and promote said nothing meanwhile."""
    pparams, eparams = promote_params(raw), evaluate_params(raw)
    name, alias = pparams.model_name, pparams.alias
    version = tracking.production_version(root, name, alias)
    if version is None:
        return Comparison(NO_PRODUCTION, f"no '{alias}' version of {name} yet: nothing to compare the candidate "
                                         "with; the threshold test against the baseline decides")
    number = str(version.version)
    if (version.tags or {}).get(tracking.BUNDLE_DIGEST_TAG) == candidate_digest:
        return Comparison(SAME_BUNDLE, f"the candidate is '{alias}' version {number} already: nothing to compare",
                          production_version=number)
    say(f"promote: scoring the candidate against '{alias}' version {number} on the candidate's validation window ...")
    try:
        with tempfile.TemporaryDirectory(prefix="shelfcast-champion-") as scratch:
            production = production_bundle(root, version, installed, Path(scratch))
            cand, prod, interval, rows, whose = compare(root, load_bundle(home / CANDIDATE_DIR), production,
                                                        eparams, train_params(raw).baseline_weeks)
    except (Unscorable, BundleError, registry_fetch.FetchError, EvaluateError, FeatureInputError, HistoryError,
            MetricInputError) as exc:
        return Comparison(UNSCORABLE, f"'{alias}' version {number} cannot be scored on the candidate's validation "
                                      f"window ({exc}); the threshold test against the baseline decides",
                          production_version=number)
    figures = (f"candidate NWRMSLE {cand:.4f} vs '{alias}' version {number}'s {prod:.4f} on the candidate's "
               f"validation window ({rows:,} rows; production forecast from {whose}): "
               f"{improvement_words(interval.estimate, interval.low, interval.high, digits=2)} "
               f"({interval.confidence:.0%} interval over {interval.series} series)")
    bound = -pparams.max_regression
    allowed = (f"worse than production by more than {pparams.max_regression:.2%}" if bound else
               "worse than production")
    measured = dict(production_version=number, candidate_nwrmsle=cand, production_nwrmsle=prod, interval=interval,
                    rows=rows, production_snapshot=whose)
    if interval.high < bound:
        message = (f"promote.max_regression: {figures}: the candidate is {allowed} with confidence; nothing "
                   "registered or installed (raise promote.max_regression to promote it on purpose)")
        raise WorseThanProduction(message, Comparison(REFUSED, message, **measured))
    return Comparison(COMPARED, f"champion/challenger passed: {figures} (refused when {allowed} with "
                                "confidence: promote.max_regression)", **measured)


def record(root: Path, name: str, version: str | None, run_id: str, comparison: Comparison) -> None:
    """The comparison as tags of the training run and, when given (a version registered before), the version."""
    client = tracking.client(root)
    for key, value in comparison.tags().items():
        client.set_tag(run_id, key, value)
        if version is not None:
            client.set_model_version_tag(name, version, key, value)
