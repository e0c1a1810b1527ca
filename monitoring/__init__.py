"""Shelfcast monitoring: drift analysis and the Fluentd/Elasticsearch/Kibana configuration.

``python -m monitoring.<command>`` (drift, metrics_events, setup_stack) imports this package first: importing
``pipeline`` here, while ``python -m`` still locates the command, sets the pipeline package's start guard for it
(pipeline/__init__.py: Ctrl-C and SIGTERM while the command imports are its one line and 130 / 143, until its main's
``run_interruptible`` takes them over). Imported any other way (the app, tests), it does nothing more.
"""

import pipeline  # noqa: F401  (the start guard of `python -m monitoring.<command>`; stdlib only)
