"""After training (driver side): the final checkpoint becomes the train stage's outs.

`export(ckpt_dir, models_dir, metrics_dir)` writes `models/{generator,discriminator}.pt`,
`metrics/train_log.csv`, `metrics/samples/` and `metrics/train_loss.png` from the checkpoint
alone (the workers write nothing of their own, so rank 0 may have run on any node);
`register_generator` logs G to MLflow as a model with signature and registers it (the version
tagged with its git commit and DVC experiment; the alias `champion` only for the default pipeline).
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

from pipeline.config import Params
from pipeline.io import atomic_dir, atomic_path
from pipeline.models import load_checkpoint, make_checkpoint, save_checkpoint
from pipeline.provenance import champion_blocker, version_tags
from pipeline.tracking import CHAMPION, Tracker
from pipeline.train.loop import LOG_FIELDS, STATE_FILE, log_fields


def write_log(rows: list[dict[str, Any]], path: Path) -> None:
    """The per-epoch CSV (DVC plot), rewritten whole: a resumed run never duplicates epochs.
    A DP run's has a dp_epsilon column (`loop.log_fields`)."""
    fields = log_fields(rows[-1]) if rows else LOG_FIELDS
    with atomic_path(path, ".csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def loss_plot(rows: list[dict[str, Any]], path: Path) -> None:
    """loss_d and loss_g per epoch as a PNG (also logged to MLflow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in ("loss_d", "loss_g"):
        ax.plot(epochs, [r[key] for r in rows], marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def export(ckpt_dir: Path, models_dir: Path, metrics_dir: Path) -> list[dict[str, Any]]:
    """Final checkpoint -> models/*.pt, metrics/train_log.csv + samples/ + train_loss.png;
    returns the run's per-epoch history."""
    state = load_checkpoint(ckpt_dir / STATE_FILE)
    meta = {k: state[k] for k in ("model_config", "image_shape", "num_classes", "class_names",
                                  "epoch", "step")}
    # With train.ema_decay, the EMA generator is the model: exported, sampled, evaluated.
    generator = state["generator_ema"]["model"] if "generator_ema" in state \
        else state["generator"]
    save_checkpoint(models_dir / "generator.pt", make_checkpoint(**meta, generator=generator))
    save_checkpoint(models_dir / "discriminator.pt",
                    make_checkpoint(**meta, discriminator=state["discriminator"]))
    history = list(state["history"])
    write_log(history, metrics_dir / "train_log.csv")
    with atomic_dir(metrics_dir / "samples") as tmp:
        shutil.copytree(ckpt_dir / "samples", tmp, dirs_exist_ok=True)
    loss_plot(history, metrics_dir / "train_loss.png")
    return history


def register_generator(tracker: Tracker, path: Path, params: Params) -> str | None:
    """Log G as an MLflow model (signature + input example) and register it under
    `mlflow.registered_model`; tag the version with its git commit and DVC experiment, and give
    it the alias `champion` only when `provenance.champion_blocker` allows. Its version."""
    from pipeline.models import load_generator
    from pipeline.models.serving import Sampler

    generator, meta = load_generator(path)
    cfg = meta["model_config"]
    sampler = Sampler(generator, cfg["latent_dim"], cfg["conditional"])
    name = params.mlflow.registered_model
    version = tracker.log_pytorch_model(sampler, "generator", sampler.input_example(), name)
    if version is not None:
        blocker = champion_blocker(params)
        tracker.label_version(name, version, version_tags(), champion=blocker is None)
        print(f"registered {name} version {version}" + (f" as @{CHAMPION}" if blocker is None
              else f", not @{CHAMPION}: {blocker}"), flush=True)
    return version
