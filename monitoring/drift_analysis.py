"""Compare served requests and forecasts with the bundle's reference statistics; decide whether to alarm.

The reference is the bundle's `served` statistics (pipeline/drift_stats.py): the features
of the requests the bundle can serve, at its own origin and horizon days. Every feature
gets a verdict the report shows with its reason:

* drift  -- PSI above drift.psi_alert and the KS (a flag's: two-proportion z) / chi-square p-value below
  drift.p_value_alert;
* inconclusive -- PSI above the threshold, but too few events for the test to tell it from chance,
  or (categories) too few events to compare any category on its own;
* follows -- a store's or item's attribute (city, type, cluster; family, class, perishable) whose alarm is
  its number's: one store's traffic is one alarm on store_nbr, not four;
* not alarmed -- a calendar feature (the horizon, the target day's calendar and holidays): the
  requested date sets it and the app refuses dates outside the window, so its shift says which
  days clients ask for, not that the data changed;
* ok.

History features (and forecasts) are compared at the requests' horizon days: each day's reference
weighted by that day's share of the requests, as the weekday means and the year-ago features depend
on the target day too (bundles without per-day history counts: every day alike, as before).
Bundles made before `served` existed are compared with their training rows, and the
report says so (history features may then differ for reasons of age, not drift).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from monitoring.drift_params import DriftParams
from monitoring.serving_data import ServingData, collect
from monitoring.statistics import MIN_EXPECTED, ShiftTest, categorical_shift, numeric_shift
from pipeline.actuals import ActualsError, SoldUnits
from pipeline.drift_stats import ROLE_CALENDAR, ROLE_HISTORY, feature_role
from pipeline.features import HORIZON_FEATURE, ITEM_FIELDS, STORE_FIELDS, horizon_days
from pipeline.metrics import MetricInputError, improvement_interval, nwrmsle, perishable_weights
from pipeline.models import CONSTANT_FEATURE_STD

CALENDAR_REASON = ("set by the requested date (and the store's holidays), which the app keeps inside the "
                   "bundle's forecast window: a shift here says which days clients ask for, not that the data "
                   "changed; shown, not alarmed")
ROLE_UNWEIGHTED = "unweighted"  # constant in training: the model gives it no weight (pipeline/models.py)
UNWEIGHTED_REASON = ("the same in every training example (e.g. no promotion ever recorded), so the model gives it "
                     "no weight: no value of it moves a forecast; shown, not alarmed")
TRAINING_REFERENCE_NOTE = ("this bundle has no served-horizon reference (made before it existed): requests are "
                           "compared with the training rows, from earlier origins; "
                           "retrain for a like-for-like reference")
NO_FORECAST_REFERENCE_NOTE = ("this bundle has no per-horizon forecast reference (promoted by older code): "
                              "`dvc repro` and `make promote` give one")
VERDICT_DRIFT, VERDICT_OK, VERDICT_INCONCLUSIVE, VERDICT_NOT_ALARMED = "drift", "ok", "inconclusive", "not alarmed"
MIN_LIVE_SERIES = 30  # series with known sales below which live accuracy (NWRMSLE, the baseline ratio) is shown,
# never alarmed: one real, ordinary row scored 1.17 against the 0.9 bound; random real subsets of 20 rows
# crossed it 2.5 % of the time
TEST_NAMES = {"ks": "KS", "proportions": "two-proportion z", "chi2": "chi-square"}  # as a verdict's note names them
VERDICT_FOLLOWS = "follows"  # a store's or item's attribute whose shift is its number's (see _follow_their_owner)
OWNED_ATTRIBUTES = {"store_nbr": STORE_FIELDS, "item_nbr": ITEM_FIELDS}


def reference_statistics(training_stats: Mapping[str, Any]) -> dict[str, Any]:
    """The statistics requests are compared with: the served-horizon reference, else the training rows."""
    served = training_stats.get("served")
    if isinstance(served, Mapping) and served.get("dense"):
        return {"kind": "served", "dense": served["dense"], "categorical": served.get("categorical", {}),
                "roles": served.get("roles", {}), "rows": served.get("rows"), "origin": served.get("origin"),
                "horizon_dates": served.get("horizon_dates"), "note": ""}
    dense = training_stats.get("dense", {})
    return {"kind": "training", "dense": dense, "categorical": training_stats.get("categorical", {}),
            "roles": {name: feature_role(name) for name in dense}, "rows": training_stats.get("rows"),
            "origin": None, "horizon_dates": None, "note": TRAINING_REFERENCE_NOTE}


CLOSED_DAYS_NOTE = ("{} event(s) of a day the store is closed (answered 0 with store_closed by the closed-day rule, "
                    "pipeline/closed_days.py, not by the model) left out")
NEW_SERIES_NOTE = ("{} event(s) for a store×item with no rows in the bundle's history (new_series: forecast from an "
                   "empty history, which the reference, the snapshot's own series, does not hold) left out")
SERVED_FORECASTS = "served forecasts at the requests' horizon days"
INNER_VALIDATION_FORECASTS = "inner-validation forecasts, every horizon day alike"


@dataclass(frozen=True)
class ForecastReference:
    """What live forecasts are compared with: the distribution, what it is, and which events are judged."""

    expected: dict[str, Any]
    kind: str  # SERVED_FORECASTS | INNER_VALIDATION_FORECASTS
    judged: np.ndarray | None = None  # events whose forecasts are compared (None: all)
    note: str = ""  # events left out, and why


def mix_by_horizon(overall: Mapping[str, Any], by_day: Mapping[str, Any], live_days: np.ndarray, what: str
                   ) -> tuple[dict[str, Any] | None, np.ndarray, str]:
    """`overall`'s histogram made of each horizon day's (pipeline/drift_stats.py by_horizon_day) weighted by that day's
    share of `live_days`: (the mixed reference, or None when no event's day has one; the events it judges; a note
    on those left out). Its sample size is the mixture's effective one, 1 / sum(share^2 / day's rows), so a few stray
    requests for other days do not count as those days' whole reference. Events at a day the reference lacks (a
    horizon feature out of range: hand-edited, or another writer's) are left out and counted, not allowed to switch
    the comparison to every day alike."""
    known = {int(day) for day, reference in by_day.items() if reference and sum(reference["counts"]) > 0}
    judged = np.isin(live_days, sorted(known))
    left_out = int((~judged).sum())
    note = (f"{left_out} event(s) at horizon days the reference has no {what} for "
            f"({', '.join(map(str, sorted(set(live_days[~judged].tolist()))[:5]))}) left out" if left_out else "")
    if not judged.any():
        return None, judged, note
    days, requests = np.unique(live_days[judged], return_counts=True)
    references = [by_day[str(int(day))] for day in days]
    weights = requests / requests.sum()
    mixed = sum(w * np.asarray(r["counts"], np.float64) / sum(r["counts"]) for w, r in zip(weights, references))
    rows = 1.0 / sum(w * w / sum(r["counts"]) for w, r in zip(weights, references))
    return ({"count": rows, "mean": float(sum(w * r["mean"] for w, r in zip(weights, references))),
             "histogram": {"edges": overall["histogram"]["edges"], "counts": (mixed * rows).tolist()}}, judged, note)


def distinct_observations(keys: Sequence[tuple[str, str, str]], values: Sequence[Any]) -> int:
    """The events that are separate observations of `values`: distinct (store, item, value). A series' history
    feature (or store, family, ...) asked for at each of its 16 days, or the same request repeated, is one
    observation, not 16: counted 16 times, 300 random series' whole windows (a dashboard's traffic, the reference's
    own shape) alarmed on `class` at chi-square p=0, and 10 series' on 7 history features at KS p < 1e-5."""
    return len({(store, item, value) for (store, item, _), value in zip(keys, values)})


def live_horizon_days(data: ServingData, horizon: int | None) -> np.ndarray | None:
    """Each event's horizon day (1 = the day after the origin), from its horizon feature; None if it cannot be told."""
    if not horizon or HORIZON_FEATURE not in data.dense:
        return None
    return horizon_days(data.dense[HORIZON_FEATURE], int(horizon))


def forecast_reference(training_stats: Mapping[str, Any], data: ServingData, horizon: int | None) -> ForecastReference:
    """The distribution live forecasts are compared with, and what it is.

    The served reference's forecasts (pipeline/drift_stats.py), each horizon day's histogram weighted by that
    day's share of the requests (mix_by_horizon): the same request mix, at the bundle's own origin. Bundles
    without per-day forecasts: the inner-validation forecasts, every day alike."""
    served = training_stats.get("served") or {}
    overall, by_day = served.get("prediction_units") or {}, served.get("prediction_by_horizon") or {}
    live_days = live_horizon_days(data, horizon)
    opened = ~data.closed  # a closed store-day's 0 is the closed-day rule's answer: the model made no forecast there
    closed_note = CLOSED_DAYS_NOTE.format(int(data.closed.sum())) if data.closed.any() else ""
    if data.new_series.any():  # the reference forecasts the snapshot's series: an empty history's forecast is no shift
        new = data.new_series & opened
        opened = opened & ~data.new_series
        closed_note = "; ".join(filter(None, (closed_note, NEW_SERIES_NOTE.format(int(new.sum())) if new.any()
                                              else "")))
    if not (overall.get("count") and by_day and live_days is not None):
        return ForecastReference(training_stats.get("prediction_units", {}), INNER_VALIDATION_FORECASTS,
                                 opened if closed_note else None, closed_note)
    if not data.rows:
        return ForecastReference(overall, SERVED_FORECASTS)
    mixed, judged_open, note = mix_by_horizon(overall, by_day, live_days[opened], "forecasts")
    judged = np.zeros(data.rows, bool)
    judged[opened] = judged_open
    return ForecastReference(overall if mixed is None else mixed, SERVED_FORECASTS, judged,
                             "; ".join(filter(None, (note, closed_note))))


def distinct_requests(keys: Sequence[tuple[str, str, str]]) -> int:
    """The distinct requests (store, item, date) among events, which drift.min_events counts: a request sent again
    (a retrying client, a reloading page) repeats every value, so it adds no observation to any test."""
    return len(set(keys))


def _shift_record(test: ShiftTest, params: DriftParams, psi_alert: float, role: str = ROLE_HISTORY,
                  events: int = 0, observations: int | None = None, requests: int | None = None) -> dict[str, Any]:
    """The verdict of one input (or the forecasts) with its reason; `observations`: the events that are distinct
    observations (distinct_observations), which the tests counted; `requests`: the distinct requests among the
    events (distinct_requests), which drift.min_events counts."""
    observations = events if observations is None else observations
    requests = events if requests is None else requests
    shifted = test.psi > psi_alert and test.p_value < params.p_value_alert
    test_name = TEST_NAMES.get(test.test, test.test)
    if not events:  # the tests of nothing come out "no shift, p=1": say there was nothing to judge
        verdict, note = VERDICT_INCONCLUSIVE, "no events to compare"
    elif role == ROLE_CALENDAR:
        verdict, note = VERDICT_NOT_ALARMED, CALENDAR_REASON
    elif role == ROLE_UNWEIGHTED:
        verdict, note = VERDICT_NOT_ALARMED, UNWEIGHTED_REASON
    elif requests < params.min_events:  # the report's "no verdict" holds for each input too: shown, not judged
        counted = f" ({requests} distinct requests)" if requests < events else ""
        verdict, note = VERDICT_INCONCLUSIVE, (f"PSI {test.psi:.3f} on {events} events{counted}, fewer than "
                                               f"drift.min_events={params.min_events}: shown, not judged")
    elif shifted:
        verdict, note = VERDICT_DRIFT, f"PSI {test.psi:.3f} > {psi_alert} and {test_name} p={test.p_value:.2g}"
    elif test.test == "chi2" and events and test.cells < 2 <= test.categories:  # more events would tell
        verdict, note = VERDICT_INCONCLUSIVE, (f"{events} events ({observations} distinct series) are too few to "
                                               "compare its categories one by one (each is expected in fewer than "
                                               f"{MIN_EXPECTED:g} of them)")
    elif test.psi > psi_alert:
        verdict, note = VERDICT_INCONCLUSIVE, (f"PSI {test.psi:.3f} > {psi_alert}, but at {events} events "
                                               f"({observations} distinct observations) the {test_name} test "
                                               f"cannot tell it from chance (p={test.p_value:.2g})")
    else:
        verdict, note = VERDICT_OK, ""
    return {"psi": test.psi, "test": test.test, "statistic": test.statistic, "p_value": test.p_value,
            "role": role, "verdict": verdict, "note": note, "drifted": verdict == VERDICT_DRIFT,
            "bins": {"labels": test.labels, "live": test.live_shares, "train": test.train_shares}}


def _most_moved_value(record: Mapping[str, Any]) -> str:
    """The value of this category whose share moved most, with its shares ("" when there are none)."""
    bins = record["bins"]
    live, train = np.asarray(bins["live"], np.float64), np.asarray(bins["train"], np.float64)
    if not live.size:
        return ""
    k = max(range(live.size), key=lambda i: (round(abs(live[i] - train[i]), 9), live[i]))  # ties: the one that rose
    return f"{bins['labels'][k]!r}, {live[k]:.1%} of requests ({train[k]:.1%} in the reference)"


def _most_moved(record: Mapping[str, Any]) -> str:
    """The value whose share moved most, for a category's drift note: the PSI alone did not say which store."""
    value = _most_moved_value(record)
    return f"; most moved: {value}" if value else ""


def baseline_feature(bundle_metadata: Mapping[str, Any]) -> str | None:
    """The logged feature that is the evaluation baseline's forecast in log1p (pipeline.models.baseline_predict:
    the mean log1p sales on the target's weekday over train.baseline_weeks weeks), or None if the bundle
    does not say its baseline."""
    weeks = ((bundle_metadata.get("params") or {}).get("train") or {}).get("baseline_weeks")
    return f"dow_mean_log1p_{weeks}w" if isinstance(weeks, int) and not isinstance(weeks, bool) else None


def _owner_shifted_by_its_attributes(owner: str, categorical: dict[str, dict[str, Any]],
                                     attributes: Sequence[str]) -> None:
    """An owner (store_nbr, item_nbr) too sparse to compare value by value, whose attribute drifted, has drifted:
    an attribute groups the owner's values, so its test is a test of the owner's on coarser cells. One store's
    window on a 54-store bundle (38 series) left store_nbr inconclusive (each store expected in fewer than 5
    series; PSI 0 over the one pooled cell) and alarmed twice, on its city and its store type."""
    record = categorical[owner]
    moved = [name for name in attributes if name in categorical and categorical[name]["drifted"]]
    if record["drifted"] or record["verdict"] != VERDICT_INCONCLUSIVE or not moved:
        return
    strongest = min(moved, key=lambda name: categorical[name]["p_value"])
    record.update(verdict=VERDICT_DRIFT, drifted=True, shown_by=moved,
                  note=(f"{' and '.join(moved)} shifted ({strongest}: PSI {categorical[strongest]['psi']:.3f}, "
                        f"chi-square p={categorical[strongest]['p_value']:.2g}), which only a shift of the {owner} "
                        f"values asked for makes; {record['note']}"))


def _follow_their_owner(categorical: dict[str, dict[str, Any]], unseen: Mapping[str, float],
                        params: DriftParams) -> dict[str, list[str]]:
    """A store's city, type and cluster (an item's family, class, perishable flag) are functions of its number:
    when the number's shift or unseen share alarms, theirs is the same fact and is shown as following it, not
    alarmed again (one store's traffic raised four alarms). {owner: [followers]}."""
    followers: dict[str, list[str]] = {}
    for owner, attributes in OWNED_ATTRIBUTES.items():
        if owner not in categorical:
            continue
        owner_unseen = unseen.get(owner, 0.0) > params.unseen_share_alert
        _owner_shifted_by_its_attributes(owner, categorical, attributes)
        for name in attributes:
            record = categorical.get(name)
            if record is None:
                continue
            shifted, unseen_over = record["drifted"], unseen.get(name, 0.0) > params.unseen_share_alert
            if (shifted or unseen_over) and (categorical[owner]["drifted"] or owner_unseen):
                # its own most-moved value (a family, not an item number), kept for the owner's reason and its note
                moved = _most_moved_value(record) if shifted else ""
                cause = (record["note"] + (f"; most moved: {moved}" if moved else "")) or "unseen"
                record.update(verdict=VERDICT_FOLLOWS, drifted=False, most_moved=moved or None,
                              note=f"an attribute of {owner}, whose alarm covers it ({cause})")
                followers.setdefault(owner, []).append(name)
    return followers


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def live_accuracy(data: ServingData, actuals: Mapping[tuple[int, int, str], float],
                  baseline: str | None = None) -> dict[str, Any]:
    """NWRMSLE of the served forecasts whose actual sales are known (perishable rows weigh 1.25); ``actuals`` as
    pipeline.actuals reads them. With ``baseline`` (a logged feature, see baseline_feature) also the weekday
    baseline's NWRMSLE on the same rows and their ratio, with evaluate's paired bootstrap interval over series:
    which series clients ask for moves both scores, the ratio far less, so it tells a model that stopped
    beating the baseline from a harder mix."""
    sold, events = {}, {}  # request -> its actual units, and the indices of its events
    for i, (store, item, date) in enumerate(data.keys):
        if data.closed[i]:  # the closed-day rule's 0, not the model's forecast: the baseline knows no closed day
            continue
        try:
            key = (int(store), int(item), date)
            units = actuals[key]
        except (KeyError, ValueError, TypeError):
            continue
        sold[key] = units
        events.setdefault(key, []).append(i)
    # one row per store, item and day, as evaluate scores it: a request asked again (a client polling one forecast
    # hourly) is one forecast of one day's sales, not more evidence; its events' forecasts averaged (units)
    matched = list(sold)
    live: dict[str, Any] = {"rows": len(matched), "events": sum(map(len, events.values())), "nwrmsle": None,
                            "baseline_nwrmsle": None, "ratio_to_baseline": None, "ratio_interval": None,
                            "closed_rows": int(data.closed.sum())}
    if not matched:
        return live
    index = np.asarray([events[key][0] for key in matched])  # each request's first event: its perishable flag
    predicted = np.asarray([data.predictions[events[key]].mean() for key in matched])
    series = [f"{store}/{item}" for store, item, _ in matched]
    live["series"] = len(set(series))
    actual = np.asarray([sold[key] for key in matched])
    perishable = np.asarray(data.categorical.get("perishable", ["0"] * data.rows))[index] == "1"
    weights = perishable_weights(perishable)
    try:
        live["nwrmsle"] = nwrmsle(actual, predicted, weights)
        if baseline in data.dense:
            logged = np.asarray(data.dense[baseline], np.float64)
            forecast = np.asarray([np.expm1(logged[events[key]]).mean() for key in matched])
            live["baseline_nwrmsle"] = nwrmsle(actual, forecast, weights)
            if live["baseline_nwrmsle"] > 0 and live["series"] >= MIN_LIVE_SERIES:
                interval = improvement_interval(series, actual, predicted, forecast, weights)
                live["ratio_to_baseline"] = live["nwrmsle"] / live["baseline_nwrmsle"]
                # an end is None where it is unbounded: draws of series only the baseline forecast exactly
                live["ratio_interval"] = [_finite_or_none(1.0 - interval.high), _finite_or_none(1.0 - interval.low)]
    except MetricInputError as exc:
        raise ActualsError(f"live NWRMSLE: {exc}") from None
    return live


def unscored_note(data: ServingData, actuals: Mapping[tuple[int, int, str], float]) -> str:
    """Why `--actuals` scored no forecast of these events ("" when there is none to score): said in the report and the
    summary line, where a file of other days (a feed for days not yet asked for, or long past) had left live accuracy
    unjudged without a word, the drift verdict `ok` and its exit 0."""
    asked = sorted(date for (_, _, date), closed in zip(data.keys, data.closed.tolist()) if not closed)
    if not asked:
        return ""
    span = actuals.day_span if isinstance(actuals, SoldUnits) else None
    days = f", the file's days {span[0]} … {span[1]}" if span else ""
    return (f"none of the {len(asked)} event(s), for {asked[0]} … {asked[-1]}, asks for a store, item and day the "
            f"actuals know (a store×item from its first row in them{days}): pass the sales of the days asked for, "
            "once they are in")


def analyse(events: Sequence[Mapping[str, Any]], bundle_metadata: Mapping[str, Any], training_stats: Mapping[str, Any],
            params: DriftParams, actuals: Mapping[tuple[str, str, str], float] | None = None,
            source: str = "", set_aside: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The drift report (a JSON-ready dict) with `alarm`, the reasons for it and a verdict per feature.

    `set_aside`: what was read but not judged (monitoring/drift.py run), shown so the count of events
    judged can be checked against the log.
    """
    reference = reference_statistics(training_stats)
    dense_names = list(reference["dense"])
    data = collect(events, dense_names, bundle_metadata["vocabularies"])
    report: dict[str, Any] = {
        "generated_at": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "source": source, "events": data.rows,
        "window": {"first": data.first_timestamp, "last": data.last_timestamp},
        "model": {"name": bundle_metadata.get("name"), "version": bundle_metadata.get("version"),
                  "training_rows": training_stats.get("rows")},
        "reference": {key: reference[key] for key in ("kind", "rows", "origin", "horizon_dates", "note")},
        "served_model_versions": data.model_versions,
        "set_aside": dict(set_aside or {"events": 0, "by_model": {}, "not_predictions": {}}),
        "thresholds": params.__dict__.copy(),
        "features": {}, "categorical": {}, "unseen": {}, "prediction": None, "live": None,
        "not_alarmed": {"features": [], "reason": CALENDAR_REASON},
        "unweighted": {"features": [], "reason": UNWEIGHTED_REASON},
        "alarm": False, "reasons": [], "status": "ok", "unseen_over_bound": [],
    }
    requests = report["distinct_requests"] = distinct_requests(data.keys)
    if requests < params.min_events:
        report["status"] = "insufficient_data"
        if requests < data.rows:  # 150 events of 3 requests said "ok: 150 events", every input ok on 3 observations
            report["reasons"].append(f"{data.rows} events, but only {requests} distinct request(s) (a repeated "
                                     f"request is one observation), fewer than drift.min_events={params.min_events}: "
                                     "no verdict")
        else:
            report["reasons"].append(f"only {data.rows} event(s), "
                                     f"fewer than drift.min_events={params.min_events}: no verdict")
        vocabularies = bundle_metadata.get("vocabularies") or {}
        stores, items = len(vocabularies.get("store_nbr") or ()), len(vocabularies.get("item_nbr") or ())
        possible = stores * items * int(bundle_metadata.get("horizon") or 0)
        if 0 < possible < params.min_events:  # a small shop's window: waiting for more traffic gives no verdict ever
            report["possible_requests"] = possible
            report["reasons"][-1] += (f"; this bundle can be asked at most {possible:,} distinct requests ({stores} "
                                      f"store(s) × {items} item(s) × {bundle_metadata['horizon']} days): lower "
                                      f"drift.min_events to at most {possible:,} for a verdict")
    reasons: list[str] = []
    live_days = live_horizon_days(data, bundle_metadata.get("horizon"))
    report["reference"]["history_by_horizon"] = any(r.get("by_horizon") for r in reference["dense"].values())
    served = training_stats.get("served") or {}  # forecasts then fall back to the inner-validation ones: say so
    if not (served.get("prediction_units") and served.get("prediction_by_horizon")):
        report["reference"]["forecast_note"] = NO_FORECAST_REFERENCE_NOTE
    for name in dense_names:
        expected = reference["dense"][name]
        trained = training_stats.get("dense", {}).get(name, {})
        unweighted = trained.get("count", 0) > 0 and trained.get("std", 1.0) <= CONSTANT_FEATURE_STD
        if expected.get("count", 0) == 0:  # no served reference (no known promotion): what training saw, if constant
            if not unweighted:
                continue
            expected = trained
        role = ROLE_UNWEIGHTED if unweighted else reference["roles"].get(name, feature_role(name))
        live, note, keys, days = data.dense[name], "", data.keys, live_days
        if role == ROLE_HISTORY and data.new_series.any():  # the reference holds the snapshot's series only
            kept = ~data.new_series
            live, keys = live[kept], [key for key, known in zip(keys, kept) if known]
            days = None if days is None else days[kept]
            note = NEW_SERIES_NOTE.format(int(data.new_series.sum()))
        if expected.get("by_horizon") and days is not None and live.size:  # at the requests' horizon days
            mixed, judged, day_note = mix_by_horizon(expected, expected["by_horizon"], days, "values")
            note = "; ".join(filter(None, (note, day_note)))
            if mixed is not None:
                expected, live, keys = mixed, live[judged], [key for key, kept in zip(keys, judged) if kept]
        effective = distinct_observations(keys, live.tolist())
        record = _shift_record(numeric_shift(live, expected, effective), params, params.psi_alert, role, live.size,
                               effective, requests if keys is data.keys else distinct_requests(keys))
        record["observations"] = effective
        if note:
            record["note"] = "; ".join(filter(None, (record["note"], note)))
        record["live_mean"] = float(np.mean(live)) if live.size else None
        record["train_mean"] = expected.get("mean")
        report["features"][name] = record
        if role == ROLE_CALENDAR:
            report["not_alarmed"]["features"].append(name)
        elif role == ROLE_UNWEIGHTED:
            report["unweighted"]["features"].append(name)
        if record["drifted"]:
            reasons.append(f"feature {name}: {record['note']}")
    for name, expected in reference["categorical"].items():
        labels = data.categorical.get(name, [])
        effective = distinct_observations(data.keys, labels)
        record = _shift_record(categorical_shift(labels, expected, effective), params, params.psi_alert, "category",
                               data.rows, effective, requests)
        record["observations"] = effective
        report["categorical"][name] = record
        report["unseen"][name] = data.unseen.get(name, 0) / data.rows if data.rows else 0.0  # by id 0, not label
    followers = _follow_their_owner(report["categorical"], report["unseen"], params)
    for name, record in report["categorical"].items():
        also = ""
        if followers.get(name):
            moved = "".join(f"; {follower}'s most moved: {report['categorical'][follower]['most_moved']}"
                            for follower in followers[name] if report["categorical"][follower].get("most_moved"))
            also = f" ({', '.join(followers[name])} follow from it{moved})"
        if record["drifted"]:
            record["note"] += _most_moved(record)
            reasons.append(f"category {name}: {record['note']}{also}")
        unseen = report["unseen"][name]
        if unseen > params.unseen_share_alert and record["verdict"] != VERDICT_FOLLOWS:
            report["unseen_over_bound"].append(name)
            reasons.append(f"category {name}: {unseen:.1%} of requests have a value unseen in training "
                           f"(> {params.unseen_share_alert:.1%}){also}")
    report["unseen"]["any"] = float(data.unknown_rows.mean()) if data.rows else 0.0
    new_series = int(data.new_series.sum())
    report["new_series"] = {"events": new_series, "share": new_series / data.rows if data.rows else 0.0}
    report["new_series"]["over_bound"] = report["new_series"]["share"] > params.unseen_share_alert
    if report["new_series"]["over_bound"]:  # one fact, one reason (not every history feature)
        reasons.append(f"series: {report['new_series']['share']:.1%} of requests ({new_series} event(s)) are for a "
                       f"store×item with no rows in the bundle's history (> {params.unseen_share_alert:.1%}): "
                       "forecast from an empty history, left out of the history features' and the forecasts' "
                       "comparison; new listings to retrain on, or clients asking for what a store does not sell")
    reference_forecasts = forecast_reference(training_stats, data, bundle_metadata.get("horizon"))
    expected, compared_with = reference_forecasts.expected, reference_forecasts.kind
    if expected.get("count", 0):
        judged = reference_forecasts.judged
        live = data.predictions if judged is None else data.predictions[judged]
        keys = data.keys if judged is None else [key for key, kept in zip(data.keys, judged) if kept]
        effective = distinct_observations(keys, live.tolist())  # repeated requests count once
        judged_requests = requests if keys is data.keys else distinct_requests(keys)
        record = _shift_record(numeric_shift(live, expected, effective), params, params.prediction_psi_alert,
                               "output", live.size, effective, judged_requests)
        record["observations"] = effective
        record["live_mean"] = float(np.mean(live)) if live.size else None
        record["train_mean"] = expected.get("mean")
        record["reference"] = compared_with
        if reference_forecasts.note:
            record["note"] = "; ".join(filter(None, (record["note"], reference_forecasts.note)))
        report["prediction"] = record
        horizon = report["features"].get(HORIZON_FEATURE) or {}
        if record["drifted"] and compared_with == INNER_VALIDATION_FORECASTS and horizon.get("psi", 0.0) > \
                params.psi_alert:
            # these reference forecasts cover every horizon day alike, and a model forecasts day 1 otherwise than
            # day 16: traffic for the next day alone (a probe: PSI 1.77 on a tiny model) shifts them
            record["note"] += (f"; the requests ask for other horizon days than the reference (horizon PSI "
                               f"{horizon['psi']:.2f}), and this bundle's reference forecasts cover every day alike "
                               "(made before per-day references): read it against the request mix, or retrain")
        if record["drifted"]:
            if record["live_mean"] is not None and record["train_mean"] is not None:  # which way they moved
                record["note"] += (f"; mean {record['live_mean']:.3g} units against {record['train_mean']:.3g} in "
                                   "the reference")
            reasons.append(f"predictions: {record['note']}")
    if actuals is not None:
        baseline = baseline_feature(bundle_metadata)
        live = live_accuracy(data, actuals, baseline)
        if live["rows"] and live["ratio_to_baseline"] is None:
            if baseline is None:
                live["note"] = "no baseline ratio: the bundle does not name its baseline (train.baseline_weeks)"
            elif baseline not in data.dense:
                live["note"] = (f"no baseline ratio: the events carry no {baseline} feature (train.baseline_weeks is "
                                "not among features.dow_weeks)")
            elif live["series"] < MIN_LIVE_SERIES:
                live["note"] = (f"no baseline ratio: {live['series']} series with known sales, fewer than "
                                f"{MIN_LIVE_SERIES}: too few to tell the model from the baseline")
            else:
                live["note"] = "no baseline ratio: the baseline's NWRMSLE is 0"
        if not live["rows"]:
            live["note"] = unscored_note(data, actuals)
        if live["closed_rows"]:
            closed = (f"{live['closed_rows']} event(s) of a day the store is closed left out: answered 0 by the "
                      "closed-day rule, not the model, where the weekday baseline knows no closed day")
            live["note"] = "; ".join(filter(None, (live.get("note"), closed)))
        report["live"] = live
        over_absolute = live["nwrmsle"] is not None and live["nwrmsle"] > params.max_live_nwrmsle
        if over_absolute and live["series"] < MIN_LIVE_SERIES:  # a few rows' error is mostly luck: not alarmed
            over_absolute = False
            live["note"] = (f"{live['note']}; " if live.get("note") else "") + (
                            f"live NWRMSLE {live['nwrmsle']:.4f} is over {params.max_live_nwrmsle}, but on "
                            f"{live['series']} series with known sales, fewer than {MIN_LIVE_SERIES}: too few to "
                            "tell a worse model from a few unlucky days; not alarmed")
        low_end = None if live["ratio_interval"] is None else live["ratio_interval"][0]
        over_baseline = live["ratio_interval"] is not None and (  # worse, with 95 % confidence (None: unbounded)
            low_end is None or low_end > params.max_live_ratio_to_baseline)
        live["over_bound"] = over_absolute or over_baseline
        if over_absolute:
            reasons.append(f"live NWRMSLE {live['nwrmsle']:.4f} over {live['rows']} rows > {params.max_live_nwrmsle}")
        if over_baseline:
            low, high = ("inf" if end is None else f"{end:.3f}" for end in live["ratio_interval"])
            reasons.append(f"live NWRMSLE {live['nwrmsle']:.4f} is {live['ratio_to_baseline']:.3f}x the weekday "
                           f"baseline's {live['baseline_nwrmsle']:.4f} on the same {live['rows']} rows "
                           f"(95% interval [{low}, {high}] > {params.max_live_ratio_to_baseline}): "
                           "the model no longer beats the baseline")
    if report["status"] != "insufficient_data" and reasons:
        report["alarm"], report["status"] = True, "drift"
    report["reasons"].extend(reasons)
    return report
