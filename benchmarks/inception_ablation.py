"""Inception FID ratio at N of quality-ablation generators: issue 11's yardstick for the rows of
`quality_ablation.py`, which scores in the domain space only.

    .venv/bin/python benchmarks/quality_ablation.py ... --keep /tmp/gens   # DIR/<row>.pt
    .venv/bin/python benchmarks/inception_ablation.py /tmp/gens/default_6ep.pt ... --merge

The reference (N test images) and the floor (N train images against them) are exactly
`inception_fid.py`'s at the same `--seed` (its `real_sets`), so the ratios compare with its files.
Each generator's fakes are `pipeline.generate.sample` from seed params.seed + 1 (as the
ablation's scoring), `--draws` disjoint N of them, each scored against the same reference; the
row is named by the file's stem (the ablation's row). About 3 minutes per 1 000 images here.
Writes benchmarks/results/inception_ablation.json (`--merge`: keep the rows not scored now).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.config import load_params
from pipeline.generate import sample
from pipeline.io import write_json
from pipeline.metrics.features import extract, inception_extractor
from pipeline.metrics.frechet import fid_from_features
from pipeline.models import load_generator

from host import cpu_model
from inception_fid import real_sets

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("generators", nargs="+", type=Path, help="generator checkpoints")
    parser.add_argument("--n", type=int, default=1000, help="images per set")
    parser.add_argument("--seed", type=int, default=0, help="inception_fid.py's --seed")
    parser.add_argument("--draws", type=int, default=1, help="disjoint draws of N fakes")
    parser.add_argument("--real", type=Path, default=ROOT / "data" / "prepared")
    parser.add_argument("--merge", action="store_true")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks" / "results" / "inception_ablation.json")
    args = parser.parse_args()
    if args.draws < 1:
        raise SystemExit(f"error: --draws {args.draws}: want at least 1")
    missing = [str(g) for g in args.generators if not g.is_file()]
    if missing:
        raise SystemExit(f"error: no such generator: {', '.join(missing)}")
    seed = load_params(ROOT / "params.yaml").seed + 1
    if args.merge and args.out.is_file():
        earlier = json.loads(args.out.read_text())
        if (earlier["n"], earlier["seed"], earlier["fake_seed"]) != (args.n, args.seed, seed):
            raise SystemExit(f"error: --merge: {args.out} holds rows of another --n, --seed or "
                             "params.yaml seed; score them into another --out")
    torch.set_num_threads(os.cpu_count() or 1)
    ex = inception_extractor("cpu")
    started = time.monotonic()
    real = {name: extract(images, ex, 50, f"inception {name}")
            for name, images in real_sets(args.real, args.n, args.seed).items()}
    reference = real["reference_test"]
    floor = fid_from_features(real["floor_train"], reference)
    rows = {}
    for path in args.generators:
        G, meta = load_generator(path)
        images, _ = sample(G, meta, args.n * args.draws, seed=seed)
        fids = [fid_from_features(extract(images[i * args.n:(i + 1) * args.n], ex, 50,
                                          f"inception {path.stem} draw {i}"), reference)
                for i in range(args.draws)]
        ratios = [f / floor for f in fids]
        rows[path.stem] = {"fid_inception": [round(f, 2) for f in fids],
                           "ratios_to_floor": [round(r, 3) for r in ratios],
                           "median_ratio": round(float(np.median(ratios)), 3),
                           "date": datetime.datetime.now(datetime.UTC).strftime(
                               "%Y-%m-%d %H:%M UTC")}
        print(f"{path.stem}: Inception FID {fids[0]:.2f}, ratios "
              f"{', '.join(f'{r:.3f}' for r in ratios)} (floor {floor:.2f})", flush=True)
    if args.merge and args.out.is_file():  # of the same --n and seeds: checked above
        rows = {**json.loads(args.out.read_text())["rows"], **rows}
    write_json(args.out, {
        "machine": {"platform": platform.platform(), "cpu": cpu_model(),
                    "cpu_count": os.cpu_count(), "torch": torch.__version__},
        "n": args.n, "seed": args.seed, "fake_seed": seed, "fid_inception_floor": round(floor, 2),
        "protocol": "per generator: draws of N fakes (pipeline.generate.sample) vs N test "
                    "images; floor = N train images vs the same test images (inception_fid.py's "
                    "sets); TF-Inception pool3, the pipeline's extractor",
        "feature_seconds_this_run": round(time.monotonic() - started, 1), "rows": rows})


if __name__ == "__main__":
    main()
