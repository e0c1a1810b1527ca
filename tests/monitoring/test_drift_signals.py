"""`make drift` and `make metrics-event` end on Ctrl-C and SIGTERM as every other command does: one line, 130 / 143.

Found by a probe: Ctrl-C during `python -m monitoring.drift` (reading 20,000 events, or waiting on Elasticsearch) was a
KeyboardInterrupt traceback of 21-46 lines and exit -2, in every one of 4 tries from 0.3 s to 2.4 s after its start;
`python -m monitoring.metrics_events` 0.3 s after its start the same. Neither ran through run_interruptible, and
``python -m monitoring.<command>`` had no start guard for its imports (pipeline/__init__.py's is set only when
``python -m`` locates a pipeline module: monitoring/__init__.py now imports pipeline for it)."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.pipeline.test_command_signals import LINE, WORDS, SilentServer

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_a_signal_while_drift_waits_on_elasticsearch_is_the_one_line_and_status(signal_name, production_bundle,
                                                                                tmp_path):
    server = SilentServer()
    try:
        process = subprocess.Popen([sys.executable, "-m", "monitoring.drift", "--bundle", str(production_bundle),
                                    "--output-dir", str(tmp_path / "report")], cwd=tmp_path, text=True,
                                   env=dict(os.environ, PYTHONPATH=str(REPO), ELASTICSEARCH_URL=server.url),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert server.asked.wait(120), f"drift never asked its server: {process.communicate()}"
            time.sleep(0.2)  # its request is sent: it waits for the answer
            process.send_signal(getattr(signal, signal_name))
            out, err = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
    finally:
        server.close()
    word, status = WORDS[signal_name]
    assert (process.returncode, out, err) == (status, "", LINE.format("drift", word) + "\n")
    assert not (tmp_path / "report").exists()  # no report of a run that did not end


@pytest.mark.parametrize("module, name", [("drift", "drift"), ("metrics_events", "metrics-event")])
def test_ctrl_c_while_a_monitoring_command_still_imports_is_its_one_line(module, name, tmp_path):
    """Its imports (numpy, pandas, the bundle code) take most of a second: the start guard's moment, as a stage's."""
    from tests.pipeline.test_stage import _wait_until_numpy_loads

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    process = subprocess.Popen([sys.executable, "-m", f"monitoring.{module}"], cwd=tmp_path, text=True,
                               env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    _wait_until_numpy_loads(process)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert (process.returncode, out, err) == (130, "", LINE.format(name, "interrupted") + "\n")
