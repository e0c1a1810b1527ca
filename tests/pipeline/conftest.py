"""Shared fixtures: a small data set written by hand in Kaggle's exact CSV layout."""

from __future__ import annotations

import datetime as dt
import gzip
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

STORES_CSV = """store_nbr,city,state,type,cluster
1,Quito,Pichincha,D,13
2,Guayaquil,Guayas,A,5
3,Cuenca,Azuay,B,6
"""

ITEMS_CSV = """item_nbr,family,class,perishable
96995,GROCERY I,1093,0
103665,BREAD/BAKERY,2712,1
105574,"LIQUOR,WINE,BEER",1045,0
108079,PRODUCE,2014,1
114790,CLEANING,3024,0
"""

# National Holiday; a national holiday transferred (the Transfer row is the day off);
# a regional day off in Pichincha (Quito), a local one in Guayaquil; a Bridge + Work Day; an Event.
HOLIDAYS_CSV = """date,type,locale,locale_name,description,transferred
2014-03-28,Holiday,Regional,Pichincha,Provincializacion de Pichincha,False
2014-04-01,Holiday,National,Ecuador,Dia de prueba,True
2014-04-04,Transfer,National,Ecuador,Traslado Dia de prueba,False
2014-04-08,Holiday,Local,Guayaquil,Fundacion de Guayaquil,False
2014-04-10,Holiday,Local,Cuenca,Fundacion de Cuenca,True
2014-04-11,Transfer,Local,Cuenca,Traslado Fundacion de Cuenca,False
2014-04-12,Work Day,National,Ecuador,Recupero puente,False
2014-04-14,Bridge,National,Ecuador,Puente,False
2014-04-18,Holiday,National,Ecuador,Viernes Santo,False
2014-04-20,Event,National,Ecuador,Dia de prueba evento,False
"""

START = dt.date(2014, 3, 25)
N_DAYS = 27  # 2014-03-25 .. 2014-04-20: onpromotion is empty before 2014-04-01
STORES = (1, 2, 3)
ITEMS = (96995, 103665, 105574, 108079, 114790)


def _train_rows() -> list[str]:
    """Deterministic sales: some store-item-days are absent (zero sales), one is a return."""
    rows, next_id = [], 0
    for d in range(N_DAYS):
        day = START + dt.timedelta(days=d)
        for s in STORES:
            for k, item in enumerate(ITEMS):
                if item == 114790 and d < 5:  # first sold on day 5 everywhere
                    continue
                if (d * 7 + s * 3 + k * 5) % 4 == 0:  # a zero-sales day: no row
                    continue
                units = 1 + (d + s + k) % 6
                if (s, item, d) == (2, 96995, 11):
                    units = -2  # a return
                value = f"{units * 0.5 + 0.125:.3f}" if item == 108079 else f"{float(units):.1f}"
                promo = "" if day < dt.date(2014, 4, 1) else ("True" if (d + k) % 5 == 0 else "False")
                rows.append(f"{next_id},{day.isoformat()},{s},{item},{value},{promo}")
                next_id += 1
    return rows


def _oil_rows() -> list[str]:
    rows = []
    for d in range(-3, N_DAYS + 5):
        day = START + dt.timedelta(days=d)
        if day.weekday() >= 5:
            continue
        value = "" if d in (-3, 6) else f"{100 + d * 0.5:.2f}"  # first price missing, and one gap
        rows.append(f"{day.isoformat()},{value}")
    return rows


def _transactions_rows() -> list[str]:
    rows = []
    for d in range(N_DAYS):
        day = START + dt.timedelta(days=d)
        for s in STORES:
            if (s, d) == (3, 4):
                continue  # a store-day without a transactions row
            rows.append(f"{day.isoformat()},{s},{1000 + 10 * d + s}")
    return rows


def _test_rows(first_id: int) -> list[str]:
    rows, next_id = [], first_id
    for d in range(N_DAYS, N_DAYS + 2):
        day = START + dt.timedelta(days=d)
        for s in STORES:
            for item in ITEMS:
                rows.append(f"{next_id},{day.isoformat()},{s},{item},{'True' if item == 96995 else 'False'}")
                next_id += 1
    return rows


def kaggle_sample_files() -> dict[str, str]:
    train = _train_rows()
    return {
        "train": "id,date,store_nbr,item_nbr,unit_sales,onpromotion\n" + "\n".join(train) + "\n",
        "test": "id,date,store_nbr,item_nbr,onpromotion\n" + "\n".join(_test_rows(len(train))) + "\n",
        "items": ITEMS_CSV,
        "stores": STORES_CSV,
        "holidays_events": HOLIDAYS_CSV,
        "oil": "date,dcoilwtico\n" + "\n".join(_oil_rows()) + "\n",
        "transactions": "date,store_nbr,transactions\n" + "\n".join(_transactions_rows()) + "\n",
    }


def write_kaggle_sample(directory: Path, compress: tuple[str, ...] = ()) -> Path:
    """Write the sample; files named in ``compress`` are gzipped (NAME.csv.gz)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in kaggle_sample_files().items():
        if name in compress:
            with gzip.open(directory / f"{name}.csv.gz", "wb") as handle:
                handle.write(text.encode("utf-8"))
        else:
            (directory / f"{name}.csv").write_text(text, encoding="utf-8")
    return directory


@pytest.fixture
def kaggle_sample(tmp_path: Path) -> Path:
    return write_kaggle_sample(tmp_path / "kaggle", compress=("train",))


def default_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def prepare_with(**fields):
    """params.yaml's prepare section with ``fields`` set: a test names what it depends on, the rest is the repo's."""
    import dataclasses

    from pipeline.params import prepare_params

    return dataclasses.replace(prepare_params(default_params()), **fields)


STOPPING_START = dt.date(2016, 12, 1)  # write_stores_that_stop: the first of its 60 sales days


def write_stores_that_stop(raw: Path) -> dict[int, int]:
    """Raw files of 4 stores x 2 items over 60 days from STOPPING_START; returns each store's last day (0-based).
    Store 2 sells nothing after day 29 (closed: no row on the last ``prepare.closed_after_days``), store 3 has no
    row on the last closed_after_days - 1 days only (shut for a fortnight, or late: not closed), store 4 none on
    days 22-26 (shut a few days, open again)."""
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "stores.csv").write_text("store_nbr,city,state,type,cluster\n"
                                    + "".join(f"{s},C,S,A,{s}\n" for s in (1, 2, 3, 4)))
    (raw / "items.csv").write_text("item_nbr,family,class,perishable\n10,F,1,0\n11,G,2,1\n")
    last_sold = {1: 59, 2: 29, 3: 59 - prepare_with().closed_after_days + 1, 4: 59}
    rows = ["id,date,store_nbr,item_nbr,unit_sales,onpromotion"]
    for d in range(60):
        for store in (1, 2, 3, 4):
            if d <= last_sold[store] and not (store == 4 and 22 <= d <= 26):
                for item in (10, 11):
                    rows.append(f"{len(rows) - 1},{STOPPING_START + dt.timedelta(days=d)},{store},{item},3,False")
    (raw / "train.csv").write_text("\n".join(rows) + "\n")
    return last_sold


def tiny_params(**synthetic) -> dict:
    """params.yaml at a tiny synthetic scale for fast tests."""
    params = default_params()
    params["data"]["synthetic"].update(dict(stores=2, items=120, start_date="2014-02-01", end_date="2014-06-30",
                                            test_days=3, compression="gzip"), **synthetic)
    return params


@pytest.fixture(scope="session")
def dask_cluster():
    """A real Dask LocalCluster of 2 worker processes on 127.0.0.1 (one thread and 2 GB each), shared by the session.

    Yields the scheduler address, as a user would put it in $SHELFCAST_DASK_SCHEDULER.
    """
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit="2GB",
                           host="127.0.0.1", dashboard_address="127.0.0.1:0")
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


def run_stage_with_file_size_limit(stage: str, root, limit: int):
    """``python -m pipeline.<stage>`` with every file it writes capped at ``limit`` bytes: the kernel refuses the
    write past it (EFBIG), as a full disk refuses one (ENOSPC), without needing root to mount a small disk."""
    import os
    import resource
    import signal
    import subprocess
    import sys

    def cap():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", f"pipeline.{stage}", "--quiet"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120, preexec_fn=cap)


def without_root_file_access() -> list[str]:
    """A command prefix under which a file's mode holds for this process: root ignores it (CAP_DAC_OVERRIDE), so as
    root the command runs without that capability (setpriv), as any other user would; skips where it cannot."""
    import os
    import shutil

    import pytest

    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root, which ignores a file's mode, and no setpriv to drop that")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def run_download_stage(root, source, prefix=()):
    """``python -m pipeline.download --quiet`` in ``root`` with ``source`` as data.source, behind ``prefix``."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(REPO), SHELFCAST_DATA_SOURCE=str(source))
    return subprocess.run([*prefix, sys.executable, "-m", "pipeline.download", "--quiet"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def read_terminal(terminal: int) -> bytes:
    """All a pseudo-terminal's other end wrote, read until it closed (EIO on Linux, or an empty read)."""
    import os

    shown = b""
    while True:
        try:
            chunk = os.read(terminal, 65536)
        except OSError:  # EIO: the other end closed
            break
        if not chunk:
            break
        shown += chunk
    return shown
