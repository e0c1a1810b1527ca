"""The canary check pairs each canary forecast with production's for the same request (pipeline/release_replay.py)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from pipeline import release
from pipeline.release_replay import ProductionReplay, request_key
from pipeline.release_store import CANARY, PRODUCTION

from .test_release import decide, serve_one_row_requests


def event(variant: str, item: int, units: float) -> dict:
    return {"model_variant": variant, "request_id": f"{variant}{item}", "instance_index": 0, "latency_ms": 2.0,
            "output": {"unit_sales": units},
            "inputs": {"store_nbr": 1, "item_nbr": item, "date": "2017-08-16", "onpromotion": False}}


def mostly_slow_sellers(variant: str, first_item: int, scale: float) -> list[dict]:
    """40 series as a catalog has them: 24 that sell next to nothing, 16 that sell a few units a day."""
    return [event(variant, first_item + n, (0.01 if n < 24 else 3.0) * scale) for n in range(40)]


def test_a_canary_far_off_on_the_series_that_sell_is_rolled_back_on_its_total_units():
    """A model trained on a feed whose quantities are x100 forecasts the slow sellers next to 0 still: the median
    of the pairs barely moves, and comparing levels of different series let it through on some splits (the
    workflow test's run 3 failed that way). Paired with production's forecasts for the same requests, its total
    units are ~100x production's."""
    production, canary = mostly_slow_sellers(PRODUCTION, 0, 1.0), mostly_slow_sellers(CANARY, 100, 1.0)
    for e in canary:
        if e["output"]["unit_sales"] > 1:
            e["output"]["unit_sales"] *= 100  # what the x100 model says where anything sells
    traffic = release.read_traffic(production + canary)
    assert release.compare(traffic, CANARY).decision == "promote"  # levels: the slow sellers hide it
    replayed = {request_key(e["inputs"]): (0.01 if e["output"]["unit_sales"] < 1 else 3.0) for e in canary}
    verdict = release.compare(traffic, CANARY, replayed=replayed)
    assert verdict.decision == "rollback", verdict
    assert abs(verdict.figures["forecast_log_shift"]) < release.MAX_FORECAST_SHIFT  # the median alone misses it
    assert verdict.figures["forecast_volume_log_ratio"] > 4 and verdict.figures["compared_pairs"] == 40
    assert "units in all against production's" in verdict.reasons[0] and "production's bundle" in verdict.reasons[0]
    healthy = release.read_traffic(production + mostly_slow_sellers(CANARY, 100, 1.1))
    verdict = release.compare(healthy, CANARY, replayed=replayed)
    assert verdict.decision == "promote" and verdict.figures["forecast_pairing"].startswith("the canary's 40")


def test_the_shadow_is_judged_on_its_total_units_too():
    traffic = release.read_traffic([{**e, "request_id": f"r{n}"} for n, e in enumerate(mostly_slow_sellers(PRODUCTION,
                                                                                                          0, 1.0))]
                                   + [{**e, "model_variant": "shadow", "request_id": f"r{n}",
                                       "output": {"unit_sales": e["output"]["unit_sales"] * (100 if n >= 24 else 1)}}
                                      for n, e in enumerate(mostly_slow_sellers(PRODUCTION, 0, 1.0))])
    verdict = release.compare(traffic, "shadow")
    assert verdict.decision == "rollback" and verdict.figures["forecast_pairing"] == "the same requests", verdict


def test_too_few_replayed_requests_fall_back_to_the_series_both_answered_then_to_levels():
    production, canary = mostly_slow_sellers(PRODUCTION, 0, 1.0), mostly_slow_sellers(CANARY, 100, 1.0)
    few = {request_key(e["inputs"]): e["output"]["unit_sales"] for e in canary[:release.MIN_EVENTS - 1]}
    verdict = release.compare(release.read_traffic(production + canary), CANARY, replayed=few)
    assert verdict.figures["forecast_pairing"] == "levels of different series", verdict


@pytest.mark.parametrize("inputs", [
    {"store_nbr": True, "item_nbr": 1, "date": "2017-08-16", "onpromotion": False},  # a bool is no store id
    {"store_nbr": 1, "item_nbr": "1", "date": "2017-08-16", "onpromotion": False},
    {"store_nbr": 1, "item_nbr": 1, "date": "2017-02-30", "onpromotion": False},
    {"store_nbr": 1, "item_nbr": 1, "date": 20170816, "onpromotion": False},
    {"store_nbr": 1, "item_nbr": 1, "date": "2017-08-16"},
    {"store_nbr": 1, "item_nbr": 1, "date": "2017-08-16", "onpromotion": "yes"},
    # date.fromisoformat takes these; numpy read the first as year 20170822 and failed on the second (a probe)
    {"store_nbr": 1, "item_nbr": 1, "date": "20170822", "onpromotion": False},
    {"store_nbr": 1, "item_nbr": 1, "date": "2017-W34-2", "onpromotion": False},
])
def test_a_request_shaped_otherwise_is_not_replayed(inputs):
    assert request_key(inputs) is None
    assert release.read_traffic([{**event(CANARY, 1, 1.0), "inputs": inputs}])[CANARY].by_inputs == {}


def test_production_replayed_answers_exactly_what_production_served(host, tmp_path, capsys):
    """Replayed on the requests production itself answered through the app, the replay gives the same numbers:
    the pairs compare like with like. Then `release decide` judges the canary on such pairs."""
    root, store, _ = host
    events = serve_one_row_requests(store, tmp_path / "events.jsonl")
    served = {request_key(e["inputs"]): e["output"]["unit_sales"] for e in events if e["model_variant"] == PRODUCTION}
    replay = ProductionReplay(store.variant_dir(PRODUCTION))
    assert len(served) >= 20 and replay.forecasts(served) == served and replay.error is None
    status, verdict = decide(root, store, capsys, "--events", str(tmp_path / "events.jsonl"))
    answers = sum(e["model_variant"] == CANARY for e in events)
    assert answers >= release.MIN_EVENTS  # the tiny catalog's canary share, asked twice
    assert verdict["figures"]["forecast_pairing"].startswith(f"the canary's {answers} answers"), verdict
    assert status == 0 and verdict["decision"] == "promote"


def test_requests_production_could_not_answer_are_left_out(host):
    root, store, _ = host
    replay = ProductionReplay(store.variant_dir(PRODUCTION))
    snapshot = replay._load().snapshot
    store_nbr, item_nbr = int(snapshot.stores["store_nbr"][0]), int(snapshot.items["item_nbr"][0])
    first = str(np.datetime64(int(snapshot.calendar_days[0]), "D"))  # int64 days: origin+1 ..
    good = (store_nbr, item_nbr, first, False)
    unknown = [(9_999, item_nbr, first, False), (store_nbr, 99_999_999, first, False),
               (store_nbr, item_nbr, "2031-01-01", False)]
    got = replay.forecasts([good, *unknown])
    assert list(got) == [good] and got[good] >= 0 and replay.error is None


def test_without_productions_bundle_the_canary_is_judged_on_levels_and_the_figures_say_why(tmp_path):
    replay = ProductionReplay(tmp_path / "no-such-bundle")
    traffic = release.read_traffic(mostly_slow_sellers(PRODUCTION, 0, 1.0) + mostly_slow_sellers(CANARY, 100, 1.0))
    verdict = release.judge(traffic, CANARY, replay=replay)
    assert verdict.figures["forecast_pairing"] == "levels of different series"
    assert "production's bundle cannot be replayed" in verdict.figures["production_replay_error"]
    assert str(tmp_path / "no-such-bundle") in verdict.figures["production_replay_error"]


def test_a_total_carried_by_two_best_sellers_is_not_enough_to_roll_back():
    """Two healthy tiny models differed by -0.52 in log1p total on thirty pairs (the slow deploy test rolled a
    healthy shadow back on the point estimate): the rule asks for the bootstrap interval beyond the bar."""
    production = [event(PRODUCTION, n, 10.0 if n < 2 else 0.05) for n in range(30)]
    canary = [event(CANARY, 100 + n, (3.0, 7.0)[n] if n < 2 else 0.05) for n in range(30)]
    replayed = {request_key(e["inputs"]): (10.0 if n < 2 else 0.05) for n, e in enumerate(canary)}
    verdict = release.compare(release.read_traffic(production + canary), CANARY, replayed=replayed)
    low, high = verdict.figures["forecast_volume_interval"]
    assert verdict.figures["forecast_volume_log_ratio"] < -release.MAX_FORECAST_SHIFT < high and low < high
    assert verdict.decision == "promote", verdict


def test_a_canarys_live_accuracy_is_judged_against_production_on_the_canarys_own_series():
    """The canary's series happened to be easy ones, production's hard: compared over each variant's own series
    the canary looked better. Paired with production's forecasts for the same series it is worse."""
    production = [event(PRODUCTION, n, 2.0) for n in range(40)]  # actual 0: production's own series, badly off
    canary = [event(CANARY, 100 + n, 1.5) for n in range(40)]  # actual 1: off by half a unit
    actuals = {**{(1, n, "2017-08-16"): 0.0 for n in range(40)}, **{(1, 100 + n, "2017-08-16"): 1.0 for n in range(40)}}
    traffic = release.read_traffic(production + canary)
    unpaired = release.compare(traffic, CANARY, actuals)
    assert unpaired.decision == "promote" and unpaired.figures["live_pairing"] == "each variant's own series"
    replayed = {request_key(e["inputs"]): 1.0 for e in canary}  # production: exactly right on them
    paired = release.compare(traffic, CANARY, actuals, replayed=replayed)
    assert paired.decision == "rollback" and "live accuracy" in paired.reasons[-1], paired
    assert paired.figures["live_pairing"].startswith("the canary's series")
    assert paired.figures["live_series"] == [40, 40] and len(paired.reasons) == 1


def test_many_answers_for_a_few_series_are_not_enough_to_roll_back():
    """Found by a probe: a healthy canary at a 5 % share answered 1,000 requests for 2 series; resampling the
    answers made the interval of their total narrow, and the rule rolled it back. The bootstrap resamples
    store×items, and the rule needs MIN_VOLUME_SERIES of them."""
    production = [event(PRODUCTION, n, 1.0) for n in range(40)]
    canary = []
    for k in range(900):  # item 100 sells nothing on both sides; item 101 the canary puts at a third
        e = event(CANARY, 100 + k % 2, 0.01 if k % 2 == 0 else 1.0)
        canary.append({**e, "request_id": f"c{k}"})
    replayed = {request_key(e["inputs"]): (0.01 if e["inputs"]["item_nbr"] == 100 else 3.0) for e in canary}
    verdict = release.compare(release.read_traffic(production + canary), CANARY, replayed=replayed)
    assert verdict.figures["forecast_volume_series"] == 2 and verdict.figures["forecast_volume_log_ratio"] < -1
    assert verdict.decision == "promote", verdict


def test_a_request_production_refuses_is_left_out_not_the_batch():
    from pipeline import release_replay

    class Bundle:  # a batch containing store 7 fails, as a snapshot at odds with its catalog would
        def predict(self, stores, items, dates, promotions):
            if 7 in stores.tolist():
                raise ValueError("store_nbr: row 0: store 7 is not one the model was trained on")
            return stores.astype(float)

    requests = [(1, 1, "2017-08-16", False), (7, 1, "2017-08-16", False), (2, 1, "2017-08-16", True)]
    assert release_replay._predict(Bundle(), requests) == [1.0, None, 2.0]


def test_a_production_bundle_that_did_not_answer_productions_traffic_is_not_replayed(host, tmp_path, capsys):
    """Found by a probe: a host whose models/production is another release than the one that answered (out of
    sync, or a decide run elsewhere) paired the canary with the wrong model and said nothing."""
    root, store, versions = host
    serve_one_row_requests(store, tmp_path / "events.jsonl")
    store.install(PRODUCTION, versions["canary"])  # the host's production is now another bundle
    # installed, as this host's records say, before the traffic (out of sync with what answered it): a production
    # installed since would start decide's window there (release.judged_since), judging none of these events
    installed = store.installed_at(CANARY)
    os.utime(store.variant_dir(PRODUCTION), (installed, installed))
    status, verdict = decide(root, store, capsys, "--events", str(tmp_path / "events.jsonl"))
    assert "is not the one that answered production's traffic" in verdict["figures"]["production_replay_error"]
    assert not verdict["figures"].get("forecast_pairing", "").startswith("the canary's"), verdict


def test_closed_day_answers_are_never_paired_nor_scored():
    """A shadow and production both answer a closed store-day 0 (store_closed): the closed-day rule's answer, not
    either model's. Counted as agreeing pairs they hid a shadow 3x production's on every other request (median
    shift 0.0 with half the requests closed), and scored against the actual 0 as perfect forecasts of both."""
    def answered(variant: str, n: int, units: float, closed: bool) -> dict:
        e = event(variant, n, 0.0 if closed else units)
        e["request_id"] = f"r{n}"
        if closed:
            e["output"]["store_closed"] = True
        return e

    events = [answered(PRODUCTION, n, 2.0, n % 2 == 0) for n in range(80)]
    events += [answered("shadow", n, 6.0, n % 2 == 0) for n in range(80)]
    traffic = release.read_traffic(events)
    actuals = {(1, n, "2017-08-16"): 0.0 if n % 2 == 0 else 2.0 for n in range(80)}
    verdict = release.compare(traffic, "shadow", actuals)
    assert verdict.decision == "rollback" and verdict.figures["compared_pairs"] == 40, verdict
    assert verdict.figures["forecast_log_shift"] == pytest.approx(np.log1p(6.0) - np.log1p(2.0), abs=1e-4)
    assert verdict.figures["live_series"] == [40, 40] and verdict.figures["production_live_rmsle"] == 0.0
    assert traffic["shadow"].closed_answers == 40 and len(traffic["shadow"].closed) == 40
