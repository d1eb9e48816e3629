"""What a model's MLflow run page shows, as plain data: metric names, tags, the description.

Pure functions (no MLflow import); `pipeline.tracking` sends what they return. The layout is
chosen for the MLflow 3.17 UI, which groups a run's charts into sections by the metric name's
prefix before "/", sorts the sections by name, and puts unprefixed metrics last, under "Model
metrics". So the names are:

    curves/<field>     per-epoch training curves (step = epoch): the first section
    detect/<key>       a few detector numbers (AUC, AP, EER, TPR at 1 % FPR, two baselines,
                       robustness AUCs)
    quality/<key>      FID with its real-vs-real floor beside it (charts sort by name), KID,
                       precision, recall
    train/total_seconds

Counts and sizes (n_domain, n_test_fake, a KID subset size, generated split sizes) and the
device are tags (`quality.n_domain`, `detect.n_test_fake`, ...), not metrics. The run
description (`mlflow.note.content`, shown on the Overview tab, collapsed to ~100 px) opens on one
line of headline numbers, then each stage's table (every metric beside its floor or baselines)
and the last epoch's sample grid. Each stage rewrites only its own part of the description:
parts are delimited by invisible markdown comments (`[//]: # (gan-forensics: quality)`), and
text a user wrote outside them is kept, at the end (after an `end` marker).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CURVES = "curves/"  # sorts before "detect/" and "quality/": the curves are the first section
SAMPLES_DIR = "samples"  # the same grids as plain run artifacts (samples/epoch_008.png)
NOTE_TAG = "mlflow.note.content"
# The description's order: collapsed, the UI shows the headline and the top of the quality table.
PARTS = ("headline", "quality", "train", "detect")
_MARKER = re.compile(r"^\[//\]: # \(gan-forensics: ([a-z]+)\)$", re.MULTILINE)


@dataclass(frozen=True)
class Summary:
    """What one stage adds to the run: metrics, tags, and its part of the description."""

    metrics: dict[str, float | None] = field(default_factory=dict)  # None: not logged
    tags: dict[str, str] = field(default_factory=dict)
    part: str = ""  # one of PARTS
    markdown: str = ""


def _num(value: Any) -> str:
    return "–" if value is None else f"{value:.4g}"


def epoch_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """One epoch's log row (loss_d, loss_g, d_real, ...) as `curves/` metrics; None is left
    out (a VAE has no D(x))."""
    return {f"{CURVES}{k}": float(v) for k, v in row.items() if v is not None and k != "epoch"}


def artifact_url(run_id: str, path: str) -> str:
    """A run artifact's address relative to the UI page (works behind a --static-prefix too)."""
    return f"get-artifact?{urllib.parse.urlencode({'path': path, 'run_uuid': run_id})}"


def train_summary(run_id: str, summary: Mapping[str, Any], samples: Path) -> Summary:
    """metrics/train.json -> the training time as a metric, and the description's training
    part with the last epoch's sample grid (the newest PNG of `samples`, which rank 0 logged
    under `samples/`)."""
    grids = sorted(samples.glob("*.png"))
    lines = [f"**Samples after {summary['epoch']} epochs** (fixed noise)", ""]
    if grids:
        url = artifact_url(run_id, f"{SAMPLES_DIR}/{grids[-1].name}")
        lines += [f"![samples of the last epoch, fixed noise]({url})", ""]
    lines += [f"Trained {summary['epoch']} epochs in {summary['total_seconds']:.0f} s, "
              f"{summary['mean_images_per_s']:.0f} images/s on {summary['world_size']} "
              "workers. Per-epoch curves: tab *Model metrics*, section *curves*; every epoch's "
              "grid: *Artifacts*, `samples/`."]
    return Summary({"train/total_seconds": float(summary["total_seconds"])}, {}, "train",
                   "\n".join(lines))


def quality_summary(metrics: Mapping[str, Any]) -> Summary:
    """metrics/quality.json -> a few `quality/` metrics (per feature space: FID and its floor,
    KID, precision, recall), the counts as tags, and the table of every value beside its floor."""
    from pipeline.metrics.registry import SPACES, format_n, metric_key  # imports torch
    from pipeline.metrics.report import VALUES

    logged: dict[str, float | None] = {}
    table = ["| metric | value | real-vs-real floor |", "|---|---:|---:|"]
    for space in SPACES:
        n = int(metrics.get(f"n_{space}") or 0)
        for value in VALUES if n else ():
            key, floor = metric_key(value, space, n), metric_key(value, space, n, floor=True)
            table.append(f"| {key} | **{_num(metrics[key])}** | {_num(metrics[floor])} |")
            logged[f"quality/{key}"] = metrics[key]
            if value == "fid":
                logged[f"quality/{floor}"] = metrics[floor]
    tags = {f"quality.{k}": str(v) for k, v in metrics.items()
            if k.startswith("n_") or k.endswith("_subset_size") or k == "device"}
    spaces = [f"{s} N={format_n(int(metrics[f'n_{s}']))}" for s in SPACES
              if metrics.get(f"n_{s}")]
    text = (f"**Image quality** ({', '.join(spaces)}): generated vs real, beside two disjoint "
            "real sets of the same N (the floor)\n\n" + "\n".join(table))
    return Summary(logged, tags, "quality", text)


DETECTORS = ("detector", "discriminator", "spectrum")
DETECT_COLUMNS = (("auc", "AUC"), ("ap", "AP"), ("eer", "EER"), ("tpr_at_1fpr", "TPR@1%FPR"),
                  ("accuracy", "acc@0.5"))


def detect_summary(metrics: Mapping[str, Any]) -> Summary:
    """metrics/detector.json -> a few `detect/` metrics, the counts as tags, and the table of
    the detector beside its two baselines, clean and after each robustness transform."""
    logged = {f"detect/detector_{k}": float(metrics[f"detector_{k}"])
              for k in ("auc", "ap", "eer", "tpr_at_1fpr", "calibrated_accuracy",
                        "source_accuracy") if f"detector_{k}" in metrics}
    logged.update({f"detect/{name}_auc": float(metrics[f"{name}_auc"])
                   for name in DETECTORS[1:] if f"{name}_auc" in metrics})
    transforms = [k.removeprefix("detector_auc_") for k in metrics
                  if k.startswith("detector_auc_") and not k.endswith("_fakes_only")]
    logged.update({f"detect/detector_auc_{t}": float(metrics[f"detector_auc_{t}"])
                   for t in transforms})
    table = ["| scorer | " + " | ".join(title for _, title in DETECT_COLUMNS) + " |",
             "|---|" + "---:|" * len(DETECT_COLUMNS)]
    for name in DETECTORS:
        bold = "**" if name == "detector" else ""
        table.append(f"| {name} | " + " | ".join(
            f"{bold}{_num(metrics.get(f'{name}_{k}'))}{bold}" for k, _ in DETECT_COLUMNS) + " |")
    if transforms:
        table += ["", "AUC after a transform of the real and fake test images alike:", "",
                  "| transform | " + " | ".join(DETECTORS) + " | detector, fakes only |",
                  "|---|" + "---:|" * (len(DETECTORS) + 1)]
        for t in transforms:
            table.append(f"| {t} | " + " | ".join(
                _num(metrics.get(f"{name}_auc_{t}")) for name in DETECTORS)
                + f" | {_num(metrics.get(f'detector_auc_{t}_fakes_only'))} |")
    tags = {f"detect.{k}": str(v) for k, v in metrics.items()
            if k.startswith("n_") or k == "device"}
    families = ", ".join(metrics.get("families") or []) or "the fakes"
    text = (f"**Detector** (the shipped one, trained on every zoo family): real vs {families}, "
            f"{metrics.get('n_test_real')} + {metrics.get('n_test_fake')} test images, beside "
            "two baselines\n\n" + "\n".join(table))
    return Summary(logged, tags, "detect", text)


def headline(metrics: Mapping[str, float], tags: Mapping[str, str]) -> str:
    """One line of the numbers that matter (what shows while the description is collapsed),
    from the run's metrics at the N of its latest evaluation (tag `quality.n_domain`)."""
    from pipeline.metrics.registry import format_n, metric_key

    parts = []
    if tags.get("quality.n_domain"):
        n = int(tags["quality.n_domain"])
        fid, floor = (metrics.get(f"quality/{metric_key('fid', 'domain', n, f)}")
                      for f in (False, True))
        if fid is not None:
            parts.append(f"FID (domain, N={format_n(n)}) **{_num(fid)}**, "
                         f"real floor {_num(floor)}")
        for kind in ("precision", "recall"):
            value = metrics.get(f"quality/{metric_key(kind, 'domain', n)}")
            if value is not None:
                parts.append(f"{kind} **{_num(value)}**")
    if "detect/detector_auc" in metrics:
        parts.append(f"detector AUC **{_num(metrics['detect/detector_auc'])}**")
    return " · ".join(parts) or "The evaluate and detect stages add their results here."


def split_note(note: str) -> dict[str, str]:
    """A description -> its marked parts; what a user wrote (before the first marker, or after
    the `end` one) under "user"."""
    out: dict[str, str] = {}
    pieces = _MARKER.split(note)
    user = [pieces[0].strip()]
    for name, text in zip(pieces[1::2], pieces[2::2], strict=True):
        if name in PARTS:
            out[name] = text.strip()
        else:  # `end`, or a marker this version does not know: the text is kept as is
            user.append(text.strip())
    if any(user):
        out["user"] = "\n\n".join(filter(None, user))
    return out


def compose_note(note: str, part: str, markdown: str, metrics: Mapping[str, float],
                 tags: Mapping[str, str]) -> str:
    """`note` with `part` replaced by `markdown` and the headline recomputed from the run's
    `metrics` and `tags`."""
    parts = split_note(note)
    parts[part] = markdown
    parts["headline"] = headline(metrics, tags)
    body = [f"[//]: # (gan-forensics: {name})\n{parts[name]}" for name in PARTS
            if parts.get(name)]
    if parts.get("user"):
        body.append(f"[//]: # (gan-forensics: end)\n{parts['user']}")
    return "\n\n".join(body) + "\n"

