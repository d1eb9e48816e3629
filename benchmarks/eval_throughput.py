"""Evaluation throughput, side by side in one run:

1. domain FID, 10k vs 10k images, end to end (FeatureNet features of both sets + Fréchet
   distance), in seconds (target <= 20 s on a 2-core CPU);
2. Inception-v3 images/s: our path (uint8 NHWC -> `inception.preprocess` -> TorchScript) vs
   the raw TorchScript forward on the same batch already preprocessed (target >= 0.9x).

Data: prepared Fashion-MNIST (`data/prepared/train.npz`) when it exists, else sklearn digits
upscaled to 28 px and repeated. FeatureNet: `--featurenet` (default models/featurenet.pt) when
it exists, else a freshly initialised one (same compute). Run from the repo root:

    .venv/bin/python benchmarks/eval_throughput.py [--inception-batches 5]

Writes benchmarks/results/eval_throughput.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.io import write_json
from pipeline.metrics.featurenet import FeatureNet, save_featurenet
from pipeline.metrics.features import domain_extractor, extract, inception_extractor
from pipeline.metrics.frechet import fid_from_features
from pipeline.metrics.inception import load_inception, preprocess


def real_images(n: int) -> tuple[np.ndarray, str]:
    path = Path("data/prepared/train.npz")
    if path.is_file():
        from pipeline.data.arrays import load_images

        images = load_images(path)
        return images[np.arange(n) % len(images)], str(path)
    from sklearn.datasets import load_digits

    small = np.round(load_digits().images * 255 / 16).astype(np.uint8)
    big = torch.nn.functional.interpolate(torch.from_numpy(small)[:, None].float(), size=28,
                                          mode="bilinear").round().clamp(0, 255)
    images = big.to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return images[np.arange(n) % len(images)], "sklearn digits upscaled to 28 px, repeated"


def featurenet_path(tmp: Path, shape: tuple[int, ...], path: Path) -> tuple[Path, str]:
    if path.is_file():
        return path, str(path)
    torch.manual_seed(0)
    net = FeatureNet(shape[-1], 10, 32, shape[0])
    save_featurenet(tmp / "fn.pt", net, {"width": 32}, shape, 0.0)
    return tmp / "fn.pt", "untrained FeatureNet width 32 (same compute)"


def domain_fid_seconds(images: np.ndarray, fn: Path, batch_size: int) -> dict[str, float]:
    start = time.perf_counter()
    ex = domain_extractor(fn, "cpu")
    half = len(images) // 2
    a = extract(images[:half], ex, batch_size)
    b = extract(images[half:], ex, batch_size)
    t_feat = time.perf_counter() - start
    fid = fid_from_features(a, b)
    total = time.perf_counter() - start
    return {"seconds": round(total, 2), "feature_seconds": round(t_feat, 2),
            "frechet_seconds": round(total - t_feat, 2), "fid": fid}


@torch.no_grad()
def inception_rates(images: np.ndarray, batches: int) -> dict[str, float]:
    ex, raw = inception_extractor("cpu"), load_inception("cpu")
    ready = preprocess(torch.from_numpy(images))  # the raw forward's input, prepared up front
    for _ in range(2):  # warm-up: TorchScript's profiling executor optimises per shape
        raw(ready)
        extract(images, ex, len(images))
    ours, raw_rates = [], []
    for _ in range(batches):  # alternate, so background load hits both alike; report medians
        t = time.perf_counter()
        extract(images, ex, len(images))
        ours.append(len(images) / (time.perf_counter() - t))
        t = time.perf_counter()
        raw(ready)
        raw_rates.append(len(images) / (time.perf_counter() - t))
    ours_med, raw_med = float(np.median(ours)), float(np.median(raw_rates))
    return {"ours_images_per_s": round(ours_med, 2), "raw_images_per_s": round(raw_med, 2),
            "ratio": round(ours_med / raw_med, 3), "batch_size": len(images), "batches": batches,
            "ours_per_batch": [round(r, 2) for r in ours],
            "raw_per_batch": [round(r, 2) for r in raw_rates]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000, help="images per side for domain FID")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--featurenet", type=Path, default=Path("models/featurenet.pt"))
    parser.add_argument("--inception-batch", type=int, default=8)
    parser.add_argument("--inception-batches", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/eval_throughput.json"))
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    images, source = real_images(2 * args.n)
    with tempfile.TemporaryDirectory() as tmp:
        fn, fn_source = featurenet_path(Path(tmp), images.shape[1:], args.featurenet)
        domain = domain_fid_seconds(images, fn, args.batch_size)
    inception = inception_rates(images[: args.inception_batch], args.inception_batches)
    result = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                   f"{os.cpu_count()} cores, torch {torch.__version__}",
        "load_average_1m": round(os.getloadavg()[0], 2), "data": source,
        "featurenet": fn_source, f"domain_fid_{args.n // 1000}k_vs_{args.n // 1000}k": domain,
        "inception": inception,
    }
    write_json(args.out, result)
    print(f"domain FID {args.n} vs {args.n}: {domain['seconds']} s "
          f"(features {domain['feature_seconds']} s, Fréchet {domain['frechet_seconds']} s)")
    print(f"Inception: ours {inception['ours_images_per_s']} img/s vs raw TorchScript "
          f"{inception['raw_images_per_s']} img/s (ratio {inception['ratio']})")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
