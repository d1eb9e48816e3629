"""Ray Train's own floor per stage run, by controller poll interval: an empty `fit()` (a
worker that returns at once) in a fresh embedded Ray, each run in its own process so that the
environment is read afresh, the contenders interleaved (A B A B ...).

    unshare -n sh -c 'ip link set lo up; .venv/bin/python benchmarks/ray_fit_end.py'

Train's controller learns that its workers have finished by polling them every
RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (Ray's default 2 s): a training function that returns just
after a poll waits for the next one. Contenders: Ray's default and the embedded Ray's setting
(`pipeline.train.launcher.LOCAL_ENV`), each set in the run's environment. Writes
benchmarks/results/ray_fit_end.json.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from host import cpu_model  # a sibling script: benchmarks/ is sys.path[0] when run

ROOT = Path(__file__).resolve().parents[1]
INTERVAL = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
ONE_RUN = ("import json, train_throughput as tt; from pipeline.config import load_params; "
           "print(json.dumps(tt.empty_fit_run(load_params('params.yaml'))))")


def contenders() -> dict[str, str]:
    """name -> the poll interval it runs with, set in its environment (the embedded Ray only
    fills in what the user has not set: `ray_session`)."""
    from pipeline.train.launcher import LOCAL_ENV

    return {"ray_default": "2.0", "embedded": LOCAL_ENV[INTERVAL]}


def one_run(interval: str) -> dict[str, float]:
    env = {**os.environ, INTERVAL: interval,
           "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), str(ROOT)])}
    out = subprocess.run([sys.executable, "-c", ONE_RUN], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True, timeout=300).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return {k: round(result[k], 2) for k in ("ray_init_s", "empty_fit_s",
                                            "fit_start_to_workers_entry_s",
                                            "workers_return_to_fit_end_s")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (>= 3)")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks" / "results" / "ray_fit_end.json")
    args = parser.parse_args()
    if args.repeats < 3:
        parser.error("--repeats: at least 3 runs per contender")
    intervals = contenders()
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in intervals}
    for round_ in range(args.repeats):
        for name, interval in intervals.items():
            runs[name].append(one_run(interval))
            print(round_ + 1, name, runs[name][-1], flush=True)
    report: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu_model(), "ray": importlib.metadata.version("ray"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "order": "interleaved rounds: " + ", ".join(runs) + ", ...",
        "contenders": {}}
    for name, rows in runs.items():
        report["contenders"][name] = {  # type: ignore[index]
            INTERVAL: intervals[name],
            **{key: {"median": statistics.median(r[key] for r in rows),
                     "min": min(r[key] for r in rows), "max": max(r[key] for r in rows),
                     "runs": [r[key] for r in rows]} for key in rows[0]}}
    medians = {name: statistics.median(r["empty_fit_s"] for r in rows)
               for name, rows in runs.items()}
    report["empty_fit_ratio_embedded_to_default"] = round(
        medians["embedded"] / medians["ray_default"], 3)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["contenders"], indent=1))


if __name__ == "__main__":
    main()
