"""DVC stage `featurenet`: train the small CNN whose penultimate layer is the domain feature
space of FID/KID/precision/recall, and report its test accuracy.

    python stages/featurenet.py --data data/prepared --model models/featurenet.pt \
        --metrics metrics/featurenet.json

Reads data/prepared/{train,val,test}.npz; params `seed`, `evaluate.device`,
`evaluate.featurenet`. The checkpoint is a dict of plain values, written atomically.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import load_params
from pipeline.errors import run_cli
from pipeline.io import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="prepared data directory")
    parser.add_argument("--model", type=Path, required=True, help="checkpoint to write")
    parser.add_argument("--metrics", type=Path, required=True, help="accuracy JSON to write")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()

    from pipeline.device import resolve_device
    from pipeline.metrics.featurenet import run_featurenet

    params = load_params(args.params)
    device = resolve_device(params.evaluate.device, "evaluate.device")
    metrics = run_featurenet(args.data, args.model, params.evaluate.featurenet, params.seed,
                             device)
    write_json(args.metrics, metrics)
    print(f"featurenet: test accuracy {metrics['test_accuracy']:.4f} "
          f"({metrics['train_seconds']} s, {metrics['images_per_second']} img/s) -> {args.model}")


if __name__ == "__main__":
    run_cli(main)
