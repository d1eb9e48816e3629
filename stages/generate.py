"""DVC stage `generate@<family>`: sample a zoo family's generator into the fake sets later
stages score.

    python stages/generate.py --generator models/dcgan/generator.pt \
        --run models/dcgan/run.json --out data/generated/dcgan

Writes <out>/{eval,detector_train,detector_val,detector_test}.npz (disjoint noise seeds; `eval`
for the default family only: only evaluate reads it) and grid.png, atomically, then adds the
grid to the model's MLflow run (when its run.json exists). Always on the CPU, so the fakes do
not depend on the machine's GPU (see pipeline/generate.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import DEFAULT_FAMILY, load_params
from pipeline.errors import run_cli


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", type=Path, required=True,
                        help="models/<family>/generator.pt")
    parser.add_argument("--run", type=Path, required=True,
                        help="models/<family>/run.json (MLflow run)")
    parser.add_argument("--out", type=Path, required=True, help="directory to write")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--family", default=DEFAULT_FAMILY, help="the zoo family: only the "
                        "default one gets the eval set (only evaluate reads it)")
    args = parser.parse_args()

    from pipeline.generate import SPLITS, generate_splits  # imports torch: after arg errors
    from pipeline.tracking import Tracker

    params = load_params(args.params)
    splits = SPLITS if args.family == DEFAULT_FAMILY else tuple(s for s in SPLITS if s != "eval")
    summary = generate_splits(args.generator, args.out, params.generate, params.seed, splits)
    print(f"{'split':<16}{'images':>8}  shape {summary['image_shape']}")
    for split in splits:
        print(f"{split:<16}{summary[split]:>8}")
    print(f"-> {args.out} in {summary['seconds']:.1f} s")
    # Files first (above): a tracking failure below loses nothing.
    if args.run.is_file():
        # Closed FINISHED, or FAILED/KILLED on an error: the model's run is never left RUNNING.
        with Tracker.reopen(params.mlflow, args.run).closing() as tracker:
            tracker.log_artifact(args.out / "grid.png", "generate")
            tracker.set_tags({f"generate.n_{s}": summary[s] for s in splits})  # counts: tags


if __name__ == "__main__":
    run_cli(main)
