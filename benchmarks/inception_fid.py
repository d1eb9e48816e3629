"""Inception FID of the default run's generator at N images, divided by the real-vs-real floor
at the same N (issue 11's yardstick: the CEO's fresh-machine check used N = 1 000).

    unshare -n sh -c 'ip link set lo up; .venv/bin/python benchmarks/inception_fid.py'

Protocol, all sets of exactly N images, drawn with a seeded permutation (`--seed`):
  * fake:      the first N of `--fake` (the generate stage's data/generated/eval.npz); with
               `--draws K`, also the next K - 1 disjoint N of the same permutation, each scored
               against the same reference, for the spread one draw of fakes carries (the first
               draw stays the headline `ratio_to_floor`, comparable with earlier files);
  * reference: N images of the TEST split (data/prepared/test.npz), never seen in training;
  * floor:     N images of the TRAIN split against the same reference: the FID two real samples
               of this size score, i.e. what a perfect generator would get at this N.
The features are the pipeline's own standard TF-Inception pool3 (`pipeline/metrics/features.py`,
the weights DESIGN.md names) and the Frechet distance is `pipeline/metrics/frechet.py`; the
evaluate stage computes them only when `evaluate.inception.enabled` (off in params.yaml's CPU
profile, N = 10 000 in params-gpu.yaml).
Writes benchmarks/results/inception_fid_<N>.json (`--out`). About 6 minutes at N = 1 000 here
(3 000 images).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.io import write_json
from pipeline.metrics.evaluate import load_split_images
from pipeline.metrics.features import extract, inception_extractor
from pipeline.metrics.frechet import fid_from_features

from host import command_line, machine, repo_relative

ROOT = Path(__file__).resolve().parents[1]
FAKE = ROOT / "data" / "generated" / "dcgan" / "eval.npz"  # the default model's


def pick(images: np.ndarray, n: int, seed: int, where: str, draws: int = 1) -> list[np.ndarray]:
    """`draws` disjoint sets of `n` images: consecutive slices of one seeded permutation."""
    if len(images) < n * draws:
        raise SystemExit(f"error: {where}: {len(images)} images, fewer than {draws} x N={n}")
    order = np.random.default_rng(seed).permutation(len(images))
    return [images[order[i * n : (i + 1) * n]] for i in range(draws)]


def real_sets(real: Path, n: int, seed: int) -> dict[str, np.ndarray]:
    """The real sets every Inception ratio here is measured with, from prepared dir `real`: the
    reference (N test images, seed + 1) and the floor's other side (N train images, seed + 2);
    `inception_ablation.py` scores against the same sets."""
    return {"reference_test": pick(load_split_images(real / "test.npz"), n, seed + 1,
                                   "test.npz")[0],
            "floor_train": pick(load_split_images(real / "train.npz"), n, seed + 2,
                                "train.npz")[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="images per set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--draws", type=int, default=1,
                        help="disjoint draws of N fakes, each against the same reference")
    parser.add_argument("--fake", type=Path, default=FAKE)
    parser.add_argument("--real", type=Path, default=ROOT / "data" / "prepared")
    parser.add_argument("--out", type=Path, default=None,
                        help="default benchmarks/results/inception_fid_<N>.json")
    args = parser.parse_args()
    out = args.out or ROOT / "benchmarks" / "results" / f"inception_fid_{args.n}.json"
    if args.draws < 1:
        raise SystemExit(f"error: --draws {args.draws}: want at least 1")
    torch.set_num_threads(os.cpu_count() or 1)
    fakes = pick(load_split_images(args.fake), args.n, args.seed, str(args.fake), args.draws)
    fake_names = ["fake"] + [f"fake_draw{i}" for i in range(1, args.draws)]
    sets = {**dict(zip(fake_names, fakes, strict=True)), **real_sets(args.real, args.n, args.seed)}
    ex = inception_extractor("cpu")
    started = time.monotonic()
    feats = {name: extract(images, ex, 50, f"inception {name}") for name, images in sets.items()}
    fids = [fid_from_features(feats[name], feats["reference_test"]) for name in fake_names]
    fid, floor = fids[0], fid_from_features(feats["floor_train"], feats["reference_test"])
    ratios = [f / floor for f in fids]
    spread = {"ratios_to_floor": [round(r, 3) for r in ratios],
              "median": round(float(np.median(ratios)), 3),
              "min": round(min(ratios), 3), "max": round(max(ratios), 3)}
    result = {
        "machine": machine(),
        "command": command_line("inception_fid.py", _arguments(args), netns=True),
        "n": args.n, "seed": args.seed, "fake": repo_relative(args.fake),
        "generator_run": _run_name() if args.fake == FAKE else None,
        "fid_inception": round(fid, 2), "fid_inception_floor": round(floor, 2),
        "ratio_to_floor": round(fid / floor, 3),
        **({"draws": spread} if args.draws > 1 else {}),
        "protocol": "fake vs N test images; floor = N train images vs the same test images; "
                    "TF-Inception pool3, the pipeline's extractor",
        "feature_seconds": round(time.monotonic() - started, 1),
    }
    write_json(out, result)
    shown = (f" (draws: median {spread['median']:.3f}, {spread['min']:.3f}-{spread['max']:.3f})"
             if args.draws > 1 else "")
    print(f"Inception FID at N={args.n}: {fid:.2f}, real-vs-real floor {floor:.2f}, "
          f"ratio {fid / floor:.3f}{shown}; wrote {out}")


def _arguments(args: argparse.Namespace) -> list[str]:
    """The arguments that make this file again: every one not at its default."""
    words = ["--n", str(args.n)]
    for flag, value, default in (("--seed", args.seed, 0), ("--draws", args.draws, 1),
                                 ("--fake", args.fake, FAKE),
                                 ("--real", args.real, ROOT / "data" / "prepared"),
                                 ("--out", args.out, None)):
        if value != default:
            words += [flag, repo_relative(value) if isinstance(value, Path) else str(value)]
    return words


def _run_name() -> str | None:
    """The train stage's run name, when its train.json is there (the fakes' generator)."""
    path = ROOT / "metrics" / "dcgan" / "train.json"
    return json.loads(path.read_text()).get("run_name") if path.is_file() else None


if __name__ == "__main__":
    main()
