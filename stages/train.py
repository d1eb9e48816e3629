"""DVC stage `train`: distributed DCGAN training with Ray Train, logged to MLflow.

    python stages/train.py --data data/prepared/train.npz --models models --metrics metrics

Rerunning after an interruption resumes from the last epoch checkpoint under `ray.storage_path`;
rerunning with a higher `train.epochs` continues the same run (see pipeline/train/identity.py).
Anything that starts Ray on these machines runs inside `unshare -n` (see README).
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from pipeline.config import load_params
from pipeline.errors import run_cli


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM (dvc, ray job stop, kill) unwinds like Ctrl-C: Ray stops, the MLflow run is KILLED.
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="prepared train.npz (path or storage URI)")
    parser.add_argument("--models", type=Path, required=True, help="output dir for the .pt files")
    parser.add_argument("--metrics", type=Path, required=True, help="output dir for logs/grids")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--export", help="also copy the outs here (set by `make submit` jobs)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupt)

    from pipeline.train.launcher import train  # imports Ray: after argument errors

    params = load_params(args.params)
    train(params, args.data, args.models, args.metrics)
    if args.export:
        from pipeline.cluster import export_outputs

        outs = [args.models / n for n in ("generator.pt", "discriminator.pt", "run.json")]
        outs += [args.metrics / n for n in ("train_log.csv", "train.json", "train_loss.png")]
        outs += sorted((args.metrics / "samples").glob("*.png"))
        export_outputs(outs, args.export)


if __name__ == "__main__":
    run_cli(main)
