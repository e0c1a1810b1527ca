"""Benchmarks P2 and P3: the pipeline's stages at full Favorita scale.

P2: download (synthetic) + prepare + split. P3 (``--through evaluate``): the
same plus train and evaluate, i.e. ``dvc repro`` end to end. Runs each stage as
its own process, exactly as `dvc repro` does, in a scratch working directory
whose params.yaml sets the scale, and measures wall time and peak resident
memory of each stage (``os.wait4`` gives the rusage of that one child).
Targets (BENCHMARKS.md): P2 <= 15 min, P3 <= 45 min, both <= 8 GB.

    python benchmarks/pipeline_scale.py              # P2, full scale: 54 stores, 2013-01-01 .. 2017-08-15
    python benchmarks/pipeline_scale.py --through evaluate   # P3 (train and evaluate too)
    python benchmarks/pipeline_scale.py --scale 0.1  # 10 % of the stores (5), same dates
    python benchmarks/pipeline_scale.py --json       # one JSON object per line as well
    python benchmarks/pipeline_scale.py --default-scale  # params.yaml as it is (the data half of P1)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = ("download", "prepare", "split", "train", "evaluate")
DATA_STAGES = 3  # P2 and P1-data stop after split
# (wall s, peak RSS GB); P1-data: the data stages' share of P1
TARGETS = {"P2": (15 * 60, 8.0), "P3": (45 * 60, 8.0), "P1-data": (40, 1.5)}
THRESHOLD_FAILED = 2  # evaluate's exit status when it ran to the end and the gate said no: timed all the same
FULL_STORES = 54


def scaled_params(scale: float | None, compression: str) -> dict:
    """params.yaml at the given fraction of the 54 stores and full dates; as it is for ``None``."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    if scale is None:
        return params
    synthetic = params["data"]["synthetic"]
    synthetic.update(stores=max(1, round(FULL_STORES * scale)), items=4100, start_date="2013-01-01",
                     end_date="2017-08-15", compression=compression)
    params["data"]["source"] = "synthetic"
    return params


def run_stage(stage: str, workdir: Path) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in GB, exit code) of one stage process."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", f"pipeline.{stage}", "--quiet"], cwd=workdir, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    return wall, usage.ru_maxrss / (1024 ** 2), process.returncode  # ru_maxrss is in KiB on Linux


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the 54 stores (default 1.0 = full P2)")
    parser.add_argument("--default-scale", action="store_true", help="use params.yaml's scale unchanged")
    parser.add_argument("--compression", choices=("gzip", "none"), default="gzip", help="raw CSV compression")
    parser.add_argument("--workdir", type=Path, help="scratch directory (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    parser.add_argument("--json", action="store_true", help="also print one JSON object per stage and in total")
    parser.add_argument("--through", choices=("split", "evaluate"), default="split",
                        help="last stage: split (P2, the data stages) or evaluate (P3, dvc repro end to end)")
    args = parser.parse_args(argv)
    if args.through == "evaluate" and args.default_scale:
        parser.error("--default-scale measures the data stages only (P1-data)")
    if not 0 < args.scale <= 1:
        parser.error("--scale must be in (0, 1]")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="shelfcast-p2-"))
    workdir.mkdir(parents=True, exist_ok=True)
    params = scaled_params(None if args.default_scale else args.scale, args.compression)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    synthetic = params["data"]["synthetic"]
    stores = synthetic["stores"]
    label = "P1-data" if args.default_scale else ("P3" if args.through == "evaluate" else "P2")
    stages = STAGES if label == "P3" else STAGES[:DATA_STAGES]
    target_wall_s, target_rss_gb = TARGETS[label]
    print(f"{label}: {stores} stores x {synthetic['items']:,} items, "
          f"{synthetic['start_date']} .. {synthetic['end_date']}, "
          f"in {workdir}", flush=True)
    results = []
    try:
        for stage in stages:
            wall, rss_gb, code = run_stage(stage, workdir)
            if code == THRESHOLD_FAILED and stage == "evaluate":
                print(f"{label}: evaluate ran to the end; its threshold test failed (timed all the same)",
                      file=sys.stderr)
            elif code != 0:
                print(f"{label}: stage {stage} failed with exit code {code}", file=sys.stderr)
                return 1
            results.append((stage, wall, rss_gb))
        grid_rows = pq.ParquetFile(workdir / "data/prepared/sales.parquet").metadata.num_rows
        raw_bytes = sum(p.stat().st_size for p in (workdir / "data/raw").iterdir())
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    total_wall = sum(r[1] for r in results)
    peak = max(r[2] for r in results)
    print("\n| stage | wall s | peak RSS GB |\n|---|---|---|")
    for stage, wall, rss in results:
        print(f"| {stage} | {wall:.1f} | {rss:.2f} |")
    print(f"| **total** | **{total_wall:.1f}** (target <= {target_wall_s}) "
          f"| **{peak:.2f}** (target <= {target_rss_gb:g}) |")
    print(f"\nraw files {raw_bytes / 1e9:.2f} GB, prepared grid {grid_rows:,} rows")
    if args.json:
        for stage, wall, rss in results:
            print(json.dumps({"id": f"{label}.{stage}", "wall_s": round(wall, 2), "peak_rss_gb": round(rss, 3)}))
        print(json.dumps({"id": label, "scale": None if args.default_scale else args.scale, "stores": stores,
                          "wall_s": round(total_wall, 2),
                          "peak_rss_gb": round(peak, 3), "ratio": round(total_wall / target_wall_s, 3),
                          "rss_ratio": round(peak / target_rss_gb, 3), "unit": "s", "grid_rows": grid_rows}))
    return 0 if total_wall <= target_wall_s and peak <= target_rss_gb else 2


if __name__ == "__main__":
    raise SystemExit(main())
