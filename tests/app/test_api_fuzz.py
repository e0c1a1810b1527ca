"""Property-based test of the JSON API, generated from its own OpenAPI document (schemathesis).

Schemathesis reads GET /api/v1/openapi.json and generates requests for every documented
operation: ones that fit the schemas (positive) and ones that break them (negative). Each
response must be documented (status, content type, body schema) and never a 5xx, and a
request that breaks the schema must be rejected with a 4xx. Derandomized: reproducible.

A schema-valid predict request may still name a store, item or date this model cannot
forecast (a documented 422), so for arbitrary positive data the "must be accepted" check
is replaced by a stricter one below: instances drawn from the model's own stores, items
and horizon must all be accepted (200) and pass every check.

(The strategies are used with Hypothesis directly: schemathesis' pytest fixture loader does
not work with pytest 9's node ids.)
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is a test extra (pip install -e '.[test]')")
from hypothesis import HealthCheck, given, settings  # noqa: E402 - after the importorskip that skips without it
from hypothesis import strategies as st  # noqa: E402 - after the importorskip that skips without it
from schemathesis import GenerationMode  # noqa: E402 - after the importorskip that skips without it
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402 - after the importorskip that skips without it

EXAMPLES = 60
FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def documented_operations(app) -> dict:
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    return {op.label: op for op in (result.ok() for result in schema.get_all_operations())}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_every_operation_answers_as_documented(served, mode):
    operations = documented_operations(served.app)
    assert set(operations) >= {"POST /api/v1/predict", "GET /api/v1/model", "GET /api/v1/items", "GET /readyz"}
    if mode == GenerationMode.NEGATIVE:  # only operations with a body or parameters can be sent broken input
        operations = {k: v for k, v in operations.items() if k in ("POST /api/v1/predict", "GET /api/v1/items")}
    statuses: dict[str, set[int]] = {}
    for label, operation in operations.items():
        @given(case=operation.as_strategy(generation_mode=mode))
        @FUZZ_SETTINGS
        def answers_as_documented(case) -> None:
            response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
            statuses.setdefault(label, set()).add(response.status_code)

        answers_as_documented()
    if mode == GenerationMode.NEGATIVE:
        assert 400 in statuses["POST /api/v1/predict"] and 400 in statuses["GET /api/v1/items"], statuses
    else:
        assert 422 in statuses["POST /api/v1/predict"], statuses


def test_instances_the_model_knows_are_always_accepted(served):
    model = served.model
    predict = documented_operations(served.app)["POST /api/v1/predict"]
    days = [model.first_date.fromordinal(model.first_date.toordinal() + k).isoformat()
            for k in range(int(model.horizon_days.size))]
    instance = st.fixed_dictionaries({"store_nbr": st.sampled_from(sorted(model.catalog.stores)),
                                      "item_nbr": st.sampled_from(sorted(model.catalog.items)),
                                      "date": st.sampled_from(days), "onpromotion": st.booleans()})

    @given(instances=st.lists(instance, min_size=1, max_size=20))
    @FUZZ_SETTINGS
    def accepted(instances) -> None:
        case = predict.Case(body={"instances": instances}, media_type="application/json")
        response = case.call_and_validate()
        assert response.status_code == 200
        assert [p["unit_sales"] >= 0 for p in response.json()["predictions"]] == [True] * len(instances)

    accepted()
