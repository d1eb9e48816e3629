"""DVC stage `train@<family>`: distributed training of one zoo family with Ray Train, logged
to MLflow.

    python stages/train.py --family dcgan --data data/prepared/train.npz \
        --models models/dcgan --metrics metrics/dcgan

The family's params are its `zoo.<family>` seed / model / train merged over the top-level ones
(`dcgan`, the default model, is the top-level ones exactly).

Rerunning after an interruption resumes from the last epoch checkpoint under `ray.storage_path`;
rerunning with a higher `train.epochs` continues the same run (see pipeline/train/identity.py).
Anything that starts Ray on these machines runs inside `unshare -n` (see README).
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from pipeline.config import DEFAULT_FAMILY, load_params
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
    parser.add_argument("--family", default=DEFAULT_FAMILY, help="the zoo family to train")
    parser.add_argument("--export", help="also copy the outs here (set by `make submit` jobs)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupt)

    from pipeline.train.launcher import train  # imports Ray: after argument errors

    params = load_params(args.params, family=args.family)
    train(params, args.data, args.models, args.metrics, family=args.family)
    if args.export:
        from pipeline.cluster import export_outputs

        outs = [args.models / n for n in ("generator.pt", "discriminator.pt", "run.json")]
        # relative to the job's cwd, so they come back to the same models/<family> paths
        outs += [args.metrics / n for n in ("train_log.csv", "train.json", "train_loss.png")]
        outs += sorted((args.metrics / "samples").glob("*.png"))
        export_outputs(outs, args.export)


if __name__ == "__main__":
    run_cli(main)
