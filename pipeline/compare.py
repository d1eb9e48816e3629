"""The key metrics of the workspace, its commit and each DVC experiment, side by side.

`dvc exp show --only-changed` lists every changed metric key and dependency hash: for two
experiments of this pipeline that is ~30 columns, so at 160 columns every cell is `…`. This
reads `dvc exp show --json` and prints one row per run with the numbers that say which run is
better (domain FID beside its real-vs-real floor, precision, recall, Inception FID, detector
AUC, leave-one-out AP, the privacy audit's best attack and TSTR, epochs, training time) and the
params that differ between the rows:

    make compare            # or: python -m pipeline.compare

Every metric is still in `dvc exp show` / `dvc metrics diff`; the data report
(metrics/data.json) is a plain out, so neither compares dataset counts.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import DEFAULT_FAMILY
from pipeline.errors import UserError, run_cli


@dataclass(frozen=True)
class Column:
    """A key metric: `pattern` full-matches its name in any metrics file; group 1 is its N."""

    label: str
    pattern: str
    fmt: str


COLUMNS = (
    Column("FID", r"fid_domain_(\d+k?)", ".4g"),
    Column("floor", r"fid_domain_floor_(\d+k?)", ".3g"),
    Column("prec", r"precision_domain_(\d+k?)", ".3f"),
    Column("recall", r"recall_domain_(\d+k?)", ".3f"),
    Column("FID-Inc", r"fid_inception_(\d+k?)", ".4g"),
    Column("det AUC", r"detector_auc()", ".4f"),
    Column("LOO AP", r"leave_one_out\.mean_ap()", ".3f"),
    Column("MIA", rf"families\.{re.escape(DEFAULT_FAMILY)}\.best_tpr_at_1pct_fpr()", ".3f"),
    Column("TSTR", rf"tstr\.families\.{re.escape(DEFAULT_FAMILY)}\.tstr_over_trtr()", ".3f"),
    Column("epochs", r"epoch()", "d"),
    Column("train s", r"total_seconds()", ".0f"),
)

LEGEND = """\
FID, floor, prec(ision), recall: generated vs real images in the domain feature space, N images
  each (metrics/quality.json); floor: real vs real at the same N. FID lower is better, prec and
  recall higher. FID-Inc: FID with Inception-v3 features. det AUC: the shipped real-vs-fake
  detector on held-out images of every zoo family (metrics/detector.json; its AP there too). LOO
  AP: a detector tested on the family it never saw, mean over families (metrics/crossgen.json).
  MIA: the best membership attack's true-positive rate at 1 % false positives against the
  default model (lower leaks less; chance is 0.01). TSTR: TSTR / TRTR, the test accuracy of a
  classifier trained on its samples over one trained on as many real images (metrics/privacy.json).
  epochs, train s: the default model's (metrics/dcgan/train.json). Right of |: the params that
  differ between the rows. Every metric: dvc exp show; dvc metrics diff."""


@dataclass
class Run:
    """One row: a run's name, its metrics (all files merged) and its flattened params."""

    name: str
    metrics: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# A zoo family's own metrics files (metrics/<family>/train.json): the row shows the default
# model's (metrics/dcgan/...), not whichever family's file comes last.
OTHER_FAMILY = re.compile(rf"metrics/(?!{DEFAULT_FAMILY}/)[^/]+/[^/]+\.json$")


def _run(name: str, data: dict[str, Any] | None) -> Run:
    run = Run(name)
    for kind, target in (("metrics", run.metrics), ("params", run.params)):
        for path, result in ((data or {}).get(kind) or {}).items():
            if kind == "metrics" and OTHER_FAMILY.search(path):
                continue
            if isinstance(result, dict) and isinstance(result.get("data"), dict):
                target.update(flatten(result["data"]))
    return run


def runs_from_json(shown: list[dict[str, Any]]) -> list[Run]:
    """Rows from `dvc exp show --json`: each baseline, then its experiments (newest first)."""
    runs = []
    for base in shown:
        rev = base["rev"]
        name = rev if rev == "workspace" else (
            f"{base['name']} ({rev[:7]})" if base.get("name") else rev[:7])
        runs.append(_run(name + (" (failed)" if base.get("error") else ""), base.get("data")))
        for exp in base.get("experiments") or []:
            for commit in exp.get("revs") or []:
                state = (exp.get("executor") or {}).get("state")
                label = f"  {commit.get('name') or exp.get('name') or ''} ({commit['rev'][:7]})"
                if commit.get("error"):
                    label += " (failed)"
                elif state and state not in ("success", "queued"):
                    label += f" ({state})"
                runs.append(_run(label, commit.get("data")))
    return runs


def show_json(repo: Path, revs: Sequence[str] = (), all_commits: bool = False) -> list[dict]:
    """`dvc exp show --json` in `repo` (queued experiments left out)."""
    cmd = [sys.executable, "-m", "dvc", "exp", "show", "--json", "--hide-queued"]
    cmd += ["--all-commits"] if all_commits else [a for r in revs for a in ("--rev", r)]
    done = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"dvc exp show failed in {repo}: {last}")
    return json.loads(done.stdout)


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return json.dumps(value) if not isinstance(value, str) else value
    return format(int(value), fmt) if fmt == "d" else format(value, fmt)


def _param_cell(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return value if isinstance(value, str) else json.dumps(value)


def table(runs: Sequence[Run]) -> str:
    """The key metrics and the differing params of `runs` as an aligned text table."""
    headers, rows = ["run"], [[r.name] for r in runs]
    for col in COLUMNS:
        regex = re.compile(col.pattern)
        found = [next(((m.group(1), v) for k, v in r.metrics.items()
                       if (m := regex.fullmatch(k))), None) for r in runs]
        if not any(found):
            continue
        sizes = {f[0] for f in found if f}
        one_n = len(sizes) == 1
        headers.append(f"{col.label} {next(iter(sizes))}".strip() if one_n else col.label)
        for row, hit in zip(rows, found, strict=True):
            if hit is None:
                row.append("-")
            else:
                n, value = hit
                row.append(_cell(value, col.fmt) + ("" if one_n or not n else f" @{n}"))
    metric_cols = len(headers)
    keys = sorted({k for r in runs for k in r.params})
    changed = [k for k in keys
               if len({json.dumps(r.params.get(k), sort_keys=True) for r in runs}) > 1]
    headers += changed
    for row, run in zip(rows, runs, strict=True):
        row += [_param_cell(run.params.get(k)) if k in run.params else "-" for k in changed]
    widths = [max(len(line[i]) for line in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        parts = [c.ljust(w) if i == 0 else c.rjust(w)
                 for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        if changed:
            parts.insert(metric_cols, "|")
        return "  ".join(parts).rstrip()

    rule = "-" * len(line(headers))
    return "\n".join([line(headers), rule, *map(line, rows), rule, LEGEND])


def compare(repo: Path = Path("."), revs: Sequence[str] = (), all_commits: bool = False) -> str:
    """The comparison table for the workspace and the experiments of `revs` (default HEAD)."""
    runs = runs_from_json(show_json(repo, revs, all_commits))
    if not runs:
        raise UserError(f"dvc exp show found nothing to compare in {repo}")
    return table(runs)


def main() -> None:
    print(compare())


if __name__ == "__main__":
    run_cli(main)
