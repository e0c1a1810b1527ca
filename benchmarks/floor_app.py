"""A trivial WSGI app for `app_load.py --server-floor`: S1's requests answered without the app, to
measure what gunicorn (with app/gunicorn_conf.py) and the load generator cost on this machine."""

from __future__ import annotations

# one row's request and a response of the size the real app gives it (~260 bytes)
REQUEST = b'{"instances": [{"store_nbr": 1, "item_nbr": 103520, "date": "2017-08-16", "onpromotion": false}]}'
RESPONSE = (b'{"model":{"name":"shelfcast-forecaster","version":"1"},"predictions":[{"date":"2017-08-16",'
            b'"item_nbr":103520,"onpromotion":false,"store_nbr":1,"unit_sales":3.1416,"expected_units":3.1416}],'
            b'"request_id":"s1-run-0-0000000000000000000000000000"}\n')


def app(environ, start_response):
    environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(RESPONSE)))])
    return [RESPONSE]
