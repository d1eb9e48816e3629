"""Wall time of each DVC stage in one `dvc repro` (what `make run` runs), from DVC's own output.

    unshare -n sh -c 'ip link set lo up; .venv/bin/python benchmarks/pipeline_timing.py --force'

Runs `dvc repro [--force]` with the venv on PATH, timestamps every "Running stage 'X'" line DVC
prints, and writes benchmarks/results/pipeline_timing.json: per-stage seconds (from its start
line to the next stage's, or to the end), the total, the per-epoch log lines each train stage
printed (by stage), and the machine with its speed: the fp32 GEMM rates with 2 threads
(`train_throughput.gemm_rates`, 2048^2, MKL's and oneDNN's; files before 2026-12-08 hold
MKL's alone) measured just before and just after the run, since this
shared host's speed drifts (189 GFLOP/s on 2026-11-24, 102-106 on the evening of 2026-12-06, when
an unchanged stage ran 1.4x slower than that afternoon) and a stage time means little without
it. `--force` re-runs every stage (the from-scratch figure, the one-time install aside);
without it only what changed runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from host import cpu_model  # noqa: E402 - sibling scripts, not a package
from train_throughput import gemm_rates  # noqa: E402

STAGE_LINE = re.compile(r"^Running stage '([^']+)'")
EPOCH_LINE = re.compile(r"\bepoch \d+/\d+ loss_d=")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="re-run every stage")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks" / "results" / "pipeline_timing.json")
    args = parser.parse_args()

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PYTHONUNBUFFERED": "1"}
    cmd = ["dvc", "repro", *(["--force"] if args.force else [])]
    gemm_before = gemm_rates(2048, 10)
    start = time.monotonic()
    marks: list[tuple[str, float]] = []
    epoch_lines: dict[str, list[str]] = {}
    lines = 0
    with subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            lines += 1
            if match := STAGE_LINE.match(line):
                marks.append((match.group(1), time.monotonic() - start))
            if EPOCH_LINE.search(line) and marks:
                epoch_lines.setdefault(marks[-1][0], []).append(line.strip())
    total = time.monotonic() - start
    gemm_after = gemm_rates(2048, 10)
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} exited {proc.returncode}; nothing written")
    ends = [t for _, t in marks[1:]] + ([total] if marks else [])  # a no-op runs no stage
    stages = {name: round(end - begin, 1) for (name, begin), end in zip(marks, ends, strict=True)}
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "cpu": cpu_model(),
        "gemm_gflop_per_s": {"before": gemm_before, "after": gemm_after},
        "command": " ".join(cmd), "total_s": round(total, 1), "stages_s": stages,
        "train_epoch_lines": epoch_lines, "output_lines": lines,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("total_s", "gemm_gflop_per_s", "stages_s")},
                     indent=2))


if __name__ == "__main__":
    main()
