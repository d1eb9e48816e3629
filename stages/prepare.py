"""DVC stage `prepare`: validate data/raw/ and write data/prepared/{train,val,test}.npz.

    python stages/prepare.py --raw data/raw --out data/prepared --metrics metrics/data.json

Each .npz holds `images` uint8 (N, H, W, C), `labels` int64, `class_names`; read them with
`pipeline.data.arrays.load_split`. metrics/data.json, the data report, gets the counts, class
histograms and the train pixel mean/std; dvc.yaml declares it a plain out, not a metric, so
`dvc exp show` compares results, not dataset counts. Outputs are replaced atomically: a failure
keeps the previous ones.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import load_params
from pipeline.errors import run_cli
from pipeline.io import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", type=Path, required=True, help="directory written by fetch")
    parser.add_argument("--out", type=Path, required=True, help="prepared directory to write")
    parser.add_argument("--metrics", type=Path, required=True,
                        help="data report JSON (counts, class histograms)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()

    from pipeline.data.prepare import prepare_dataset  # after argument errors: imports PIL

    params = load_params(args.params)
    metrics = prepare_dataset(args.raw, args.out, params.data, params.seed)
    write_json(args.metrics, metrics)
    counts = ", ".join(f"{k} {v}" for k, v in metrics["counts"].items())
    print(f"prepared {metrics['dataset']} {metrics['image_shape']}: {counts} -> {args.out}")


if __name__ == "__main__":
    run_cli(main)
