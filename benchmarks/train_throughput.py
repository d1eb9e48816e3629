"""Training throughput: a plain torch loop (1 process x 2 threads) vs Ray Train DDP (2 x 1).

Same data (prepared Fashion-MNIST when `data/prepared/train.npz` exists, else sklearn digits
upscaled to 28 px), same DCGAN (params.yaml model defaults), same global batch 128, same GAN step
(`pipeline.train.loop.run_epoch`). Steady-state images/s skips the warm-up steps. Also measures
Ray's start-up: `ray.init` seconds and fit() start -> first training step. Run it inside a
network namespace (it starts Ray):

    unshare -n sh -c 'ip link set lo up; .venv/bin/python benchmarks/train_throughput.py'

Writes benchmarks/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import ModelConfig
from pipeline.io import write_json
from pipeline.models import build_models
from pipeline.train.data import batches, load_train_arrays
from pipeline.train.loop import run_epoch

ROOT = Path(__file__).resolve().parents[1]
GLOBAL_BATCH = 128


def load_data() -> tuple[np.ndarray, np.ndarray, str]:
    prepared = ROOT / "data" / "prepared" / "train.npz"
    if prepared.is_file():
        arrays = load_train_arrays(prepared)
        return arrays.images, arrays.labels, "fashion-mnist (data/prepared/train.npz)"
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images[:, None].astype(np.float32) / 16.0)
    x = torch.nn.functional.interpolate(x, size=28, mode="bilinear", align_corners=False)
    images = (x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    return images, d.target.astype(np.int64), "sklearn digits upscaled to 28 px"


def timed_steps(images: np.ndarray, labels: np.ndarray, local_batch: int, warmup: int,
                steps: int, rank: int = 0, world: int = 1,
                prepare=lambda m: m) -> dict[str, float]:
    """Run warmup + steps GAN steps (cycling epochs); time the steps after the warm-up."""
    torch.manual_seed(0)
    model = ModelConfig()
    G, D = build_models(model.model_dump(), (images.shape[3], images.shape[1], images.shape[2]),
                        10)
    G, D = prepare(G), prepare(D)
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    marks: dict[str, float] = {}
    done, epoch = 0, 0

    def on_step(_epoch: int, _step: int) -> None:
        nonlocal done
        if done == 0:
            marks["first_step"] = time.time()
        if done == warmup:
            marks["t0"] = time.perf_counter()
        done += 1

    while done < warmup + steps:
        epoch += 1
        rng = np.random.default_rng(epoch)
        order = rng.permutation(len(images))[rank::world].tolist()
        run_epoch(G, D, opt_g, opt_d, batches(images, labels, order, local_batch,
                                              torch.device("cpu")),
                  epoch=epoch, latent_dim=model.latent_dim, num_classes=0,
                  noise=torch.Generator().manual_seed(epoch * 16 + rank),
                  device=torch.device("cpu"), max_steps=warmup + steps - done, on_step=on_step)
    seconds = time.perf_counter() - marks["t0"]
    return {"images_per_s": steps * GLOBAL_BATCH / seconds, "seconds": seconds,
            "first_step": marks["first_step"]}


def _ray_worker(config: dict[str, Any]) -> None:
    import ray
    import ray.train
    import ray.train.torch

    torch.set_num_threads(1)
    ctx = ray.train.get_context()
    out = timed_steps(ray.get(config["images"]), ray.get(config["labels"]),
                      GLOBAL_BATCH // ctx.get_world_size(), config["warmup"], config["steps"],
                      ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.prepare_model)
    # Ray Train V2 keeps reported metrics only together with a checkpoint: rank 0 attaches one.
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "timing.json").write_text(json.dumps(out))
        ckpt = ray.train.Checkpoint.from_directory(tmp) if ctx.get_world_rank() == 0 else None
        ray.train.report(out, checkpoint=ckpt)


def bench_ray(images: np.ndarray, labels: np.ndarray, warmup: int, steps: int,
              workers: int = 2) -> dict[str, float]:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    temp = tempfile.mkdtemp(prefix="rgf-", dir="/tmp")
    storage = tempfile.mkdtemp(prefix="rgf-bench-")
    t0 = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, _temp_dir=temp, logging_level="ERROR")
    init_s = time.perf_counter() - t0
    try:
        fit_start = time.time()
        trainer = TorchTrainer(
            _ray_worker,
            train_loop_config={"images": ray.put(images), "labels": ray.put(labels),
                               "warmup": warmup, "steps": steps},
            scaling_config=ScalingConfig(num_workers=workers,
                                         resources_per_worker={"CPU": 1}),
            run_config=RunConfig(name="bench", storage_path=storage))
        metrics = trainer.fit().metrics
        fit_s = time.time() - fit_start
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
        shutil.rmtree(storage, ignore_errors=True)
    return {"images_per_s": metrics["images_per_s"], "ray_init_s": init_s,
            "fit_start_to_first_step_s": metrics["first_step"] - fit_start,
            "fit_total_s": fit_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks" / "results" / "train_throughput.json")
    args = parser.parse_args()
    images, labels, source = load_data()

    # Other processes share these 2 cores: run the plain loop before AND after Ray, record the
    # load average, and compare against the better plain run.
    load_before = os.getloadavg()[0]
    torch.set_num_threads(2)
    plain_runs = [timed_steps(images, labels, GLOBAL_BATCH, args.warmup, args.steps)]
    print(f"plain torch 1x2 threads: {plain_runs[0]['images_per_s']:.0f} img/s", flush=True)
    ray_ = bench_ray(images, labels, args.warmup, args.steps)
    plain_runs.append(timed_steps(images, labels, GLOBAL_BATCH, args.warmup, args.steps))
    print(f"plain torch 1x2 threads: {plain_runs[1]['images_per_s']:.0f} img/s", flush=True)
    plain = max(plain_runs, key=lambda r: r["images_per_s"])
    print(f"Ray Train DDP 2x1 thread: {ray_['images_per_s']:.0f} img/s; ray.init "
          f"{ray_['ray_init_s']:.1f} s, fit start -> first step "
          f"{ray_['fit_start_to_first_step_s']:.1f} s", flush=True)
    result = {
        "machine": f"{platform.node()} ({platform.processor() or platform.machine()}, "
                   f"{os.cpu_count()} cpus)",
        "torch": torch.__version__, "ray": __import__("ray").__version__,
        "data": source, "image_shape": list(images.shape[1:]), "model": ModelConfig().model_dump(),
        "global_batch": GLOBAL_BATCH, "warmup_steps": args.warmup, "timed_steps": args.steps,
        "load_average_1min_before": round(load_before, 2),
        "load_average_1min_after": round(os.getloadavg()[0], 2),
        "plain_2_threads_runs_images_per_s": [round(r["images_per_s"], 1) for r in plain_runs],
        "plain_2_threads_images_per_s": round(plain["images_per_s"], 1),
        "ray_2x1_images_per_s": round(ray_["images_per_s"], 1),
        "ray_over_plain": round(ray_["images_per_s"] / plain["images_per_s"], 3),
        "ray_init_s": round(ray_["ray_init_s"], 2),
        "ray_fit_start_to_first_step_s": round(ray_["fit_start_to_first_step_s"], 2),
        "ray_fit_total_s": round(ray_["fit_total_s"], 2),
        "ray_startup_s": round(ray_["ray_init_s"] + ray_["fit_start_to_first_step_s"], 2),
    }
    write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
