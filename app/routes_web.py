"""The page for people: GET / shows the form, and with the form's fields in its query string also their forecast.

A forecast only reads, so it is a GET: reload, bookmark, share and Back show it again, never a browser's
"Confirm Form Resubmission". Each forecast shown logs one prediction event. A POSTed form (a page loaded
before forecasts were GETs, a script) is sent on to that GET address: 303, POST/redirect/GET. A POST whose
body is not a form (JSON meant for the API) is refused, 415, and a posted field that cannot be read (not UTF-8)
is named on the form page, 400, rather than sent on as an empty or mistyped field.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
from flask import (Blueprint, Response, abort, current_app, g, make_response, redirect, render_template, request,
                   url_for)
from werkzeug.exceptions import RequestEntityTooLarge

from app.chart import SIZES, format_units, sales_chart_svg
from app.errors import FormTooLarge
from app.examples import example_for
from app.form_body import PostedForm, read_form, repeated_field
from app.predictor import LoadedModel
from app.service import day_numbers, forecast_instances
from app.state import serving_state
from app.catalog import MAX_QUERY, Item, shown_name
from app.validation import (FORM_FIELDS, FORM_VALUE_CHARS, LEADING_NUMBER, FormInput, Instance, check_form_type,
                            form_values, parse_form, shorten)
from app.variants import installed_candidates, predict_with_variants
from pipeline.release_store import PRODUCTION

web = Blueprint("web", __name__)
web.add_app_template_filter(format_units, "units")  # the heading's number as the table and the chart write it
web.add_app_template_filter(shown_name, "shown_name")  # a name from the data outside a label (the placeholder's)
CHART_HISTORY_DAYS = 56
FAVICON = "favicon.svg"  # in app/static; base.html links it
RESULT_ANCHOR = "result"  # the forecast's section: a submitted form lands there (on a phone it is below the form)
SUGGESTED_ITEMS = 20  # products listed with a page whose product is no number: as many as the page's script asks for


def _suggested_items(model: LoadedModel, form: FormInput) -> list[Item]:
    """When the product typed is no number ("bread"), the products it names, sent with the page as the product
    list's options, and the error says how many: the page's script offers them as one types, but without
    JavaScript the list was empty while the error asked to pick from it."""
    typed = form.values.get("item", "")
    if "item" not in form.errors or not typed or LEADING_NUMBER.fullmatch(typed):
        return []
    items, total = model.catalog.search(typed[:MAX_QUERY], SUGGESTED_ITEMS)
    if items:
        shown = "" if total <= len(items) else f" (the first {len(items)} are listed)"
        form.errors["item"] = (f"Pick a product from the list: {total} match “{shorten(typed)}”{shown}; or type "
                               "its item number.")
    return items


def _page(model: LoadedModel | None, form: FormInput | None = None, result: dict | None = None, status: int = 200):
    values = form.values if form else dict.fromkeys(FORM_FIELDS, "")
    item_options = [result["item"]] if result else _suggested_items(model, form) if form and model else []
    errors = form.errors if form else {}
    first_error = next((name for name in FORM_FIELDS if name in errors), None)  # focused: the page's order
    return render_template("index.html", model=model, values=values, errors=errors, first_error=first_error,
                           result=result, item_options=item_options, example=example_for(model) if model else None,
                           action=url_for("web.index", _anchor=RESULT_ANCHOR), max_chars=FORM_VALUE_CHARS), status


@web.get("/")
def index():
    state = serving_state()
    model = state.predictor.model
    if model is None:
        return _page(None, status=503)
    if not form_values(request.args):
        return _page(model)
    form = parse_form(request.args, model)
    for name in FORM_FIELDS:  # /?store=1&store=2 forecast store 1: a repeated field is the sender's mistake, named
        if len(request.args.getlist(name)) > 1:
            form.errors[name] = repeated_field(name)
            form.instance = None
    if form.instance is None:
        return _page(model, form, status=400)
    if request.method == "HEAD":  # a link checker's or a preview's: nothing is shown, so nothing is forecast or logged
        return _head_without_length(_page(model, form))
    if embedded_by_another_site(request.headers):
        abort(403, description=EMBEDDED_REFUSAL)
    instance = form.instance
    # the release variant the API answers this store×item with (a canary's share), so a person and a program get
    # the same forecast, and a shadow sees the form's forecasts too
    g.candidates = installed_candidates(state.variants)
    [prediction], answered_by, shadow = predict_with_variants(model, state.variants, g.candidates, [instance],
                                                              state.sink, g.request_id, g.started, source="web")
    [(variant, answering)] = answered_by.items()
    result = _result(answering, instance, prediction["unit_sales"])
    result["expected_units"] = prediction.get("expected_units")  # None for a bundle trained before them
    result["store_closed"] = prediction.get("store_closed", False)
    result["closed_reason"] = prediction.get("closed_reason")  # a day it is closed, or closed for good since when
    result["answered_by"] = None if variant == PRODUCTION else {"variant": variant, "name": answering.name,
                                                                "version": answering.version}
    response = make_response(_page(model, form, result=result))
    response.headers["X-Model-Variant"] = variant
    if shadow is not None:
        response.call_on_close(shadow)  # after the page is sent, as the API does
    return response


EMBEDDED_REFUSAL = ("a forecast is shown to a page opened in a browser's window or tab, not inside another site's "
                    "page (an image, a frame, a script's fetch): nothing was forecast or logged; open the address "
                    "itself")


def embedded_by_another_site(headers) -> bool:
    """Whether a browser sent this for another site's page as a resource of it (``<img src="https://shop/?store=1&…">``,
    a frame, a ``fetch``), by its Fetch Metadata headers (``Sec-Fetch-Site: cross-site``, a ``Sec-Fetch-Dest`` other
    than a window's ``document``). Every such load forecast and logged a prediction event nobody saw, which a page
    anywhere on the web could send by the thousand to skew /monitoring and drift. A link followed from another site
    (a top-level navigation), a program and a browser too old to send the headers are answered as before."""
    return headers.get("Sec-Fetch-Site") == "cross-site" and headers.get("Sec-Fetch-Dest", "document") != "document"


def _head_without_length(page) -> Response:
    """A HEAD of a forecast's address: the form's page, not the forecast's a GET of it sends (none is made), so its
    size is no Content-Length (RFC 9110 8.6: a HEAD's is the size a GET would send, or none): the form's 3.2 KB was
    sent where the GET's page is 67 KB (the tiny test model's), which a client sizing the page by HEAD believes."""
    response = make_response(page)
    response.automatically_set_content_length = False  # Werkzeug sets it again from the body otherwise
    del response.headers["Content-Length"]
    return response


@web.post("/")
def submit():
    """The form as pages before GET forecasts posted it: 303 to the address that shows its forecast; a body that
    is no form (JSON, text) is 415 on the error page, naming the API, and a field that cannot be read (not in its
    charset) is 400 on the form page, beside it."""
    check_form_type(request.mimetype, bool(request.content_length))
    posted = _posted_form()
    if not posted.errors:
        return redirect(url_for("web.index", **form_values(posted.values), _anchor=RESULT_ANCHOR), 303)
    # a field that could not be read: 400 here, beside it, with the rest of the form checked as the GET would
    model = serving_state().predictor.model
    if model is None:
        return _page(None, status=503)
    form = parse_form(posted.values, model)
    form.errors.update(posted.errors)
    form.instance = None
    return _page(model, form, status=400)


@web.get("/favicon.ico")
def favicon():
    """The pages' icon (they link it) for a browser asking the conventional address: no 404 in the log."""
    return current_app.send_static_file(FAVICON)


def _posted_form() -> PostedForm:
    """The posted fields, read strictly (app/form_body.py); within the body size limit a 413 here is Werkzeug's
    form limits: say so."""
    config = current_app.config
    try:
        return read_form(request.get_data(cache=False), request.mimetype, request.mimetype_params,
                         config["MAX_FORM_PARTS"], config["MAX_FORM_MEMORY_SIZE"])
    except RequestEntityTooLarge:
        if config["MAX_CONTENT_LENGTH"] is not None and (request.content_length or 0) > config["MAX_CONTENT_LENGTH"]:
            raise
        raise FormTooLarge(f"the form has more than {config['MAX_FORM_PARTS']} parts (fields), or a field larger "
                           f"than {config['MAX_FORM_MEMORY_SIZE']} bytes: Werkzeug's form limits (the body itself "
                           "is within its size limit)") from None


def _result(model: LoadedModel, instance: Instance, units: float) -> dict:
    """What the page shows: the number, what it is for, and the chart of history + horizon."""
    horizon = model.horizon_days
    over_horizon = [Instance(instance.store_nbr, instance.item_nbr, day, instance.onpromotion)
                    for day in _dates(horizon)]
    over = forecast_instances(model, over_horizon)
    horizon_units = over.units
    closed = np.zeros(len(over_horizon), bool) if over.store_closed is None else over.store_closed
    history = model.catalog.recent_sales(instance.store_nbr, instance.item_nbr, CHART_HISTORY_DAYS)
    origin = int(model.bundle.snapshot.origin_day)
    history_days = list(range(origin - history.size + 1, origin + 1))
    chosen = int(day_numbers([instance.date])[0])
    charts = [sales_chart_svg(history_days, history.tolist(), horizon.tolist(), horizon_units.tolist(), chosen, size)
              for size in SIZES]
    days = [{"date": date, "units": format_units(u), "chosen": int(d) == chosen, "closed": bool(shut)}
            for d, date, u, shut in zip(horizon, _dates(horizon), horizon_units.tolist(), closed.tolist())]
    return {
        "units": units, "instance": instance,
        "item": model.catalog.items[instance.item_nbr], "store": model.catalog.stores[instance.store_nbr],
        "charts": charts, "days": days, "history_days": history.size,
    }


def _dates(days) -> list[dt.date]:
    return [dt.date(1970, 1, 1) + dt.timedelta(days=int(d)) for d in days]
