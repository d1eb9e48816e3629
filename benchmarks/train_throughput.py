"""Training throughput: plain torch (1 process x 2 threads, NCHW and channels_last; DDP over 2
processes x 1 thread) vs Ray Train (1 worker x 2 threads, the CPU profile's layout, and DDP over
2 workers x 1 thread), each put against the FLOP counter and the machine's GEMM peak.

All contenders run the same GAN step (`pipeline.train.loop.run_epoch` over
`pipeline.train.data.DeviceArrays` batches) on the same data (`--data`, by default the prepared
Fashion-MNIST `data/prepared/train.npz`; when it is missing, sklearn digits upscaled to 28 px),
with the same DCGAN and optimiser (params.yaml `model` and `train` sections) and the same
global batch (params.yaml `train.batch_size`). Images/s is the steady state: `--steps` timed
steps after `--warmup` steps.

  plain     this process, 2 torch threads, NCHW (the default memory format)
  plain_cl  the same with channels_last batches and models (as `loop.train_worker` does)
  plain_ddp torch DDP without Ray: 2 spawned processes x 1 thread, gloo over a FileStore,
            G and D wrapped as the launcher wraps them (`loop.DDP_OPTIONS`), half the batch
            each; channels_last as ray_ddp. What DDP itself costs on this machine
  two_solo  the same 2 processes x 1 thread at the same time, each training its half of the
            batch with no process group: DDP's compute without its all-reduce and waits
  ray_1x2   a fresh local Ray, a 1-worker TorchTrainer with 2 threads (params.yaml's layout on
            this machine: ray.num_workers 1, cpus_per_worker 2); channels_last as params.yaml
            `train.channels_last` says
  ray_ddp   the same with 2 workers x 1 thread: DDP over gloo (`loop.DDP_OPTIONS`), half the
            batch per worker; ray_ddp / plain_ddp is what Ray adds to DDP

What the numbers mean (issue 11: the benchmark prints these ratios itself):
  * FLOP/image: `torch.utils.flop_counter.FlopCounterMode` over one `run_epoch` step (D step +
    G step, forward and backward) at the global batch, divided by the batch;
  * GEMM peak: an fp32 n x n by n x n product (`--gemm-n`) with 2 threads, 2 n^3 / time, the
    median of `--gemm-repeats` products, measured twice before every round: by MKL's
    `torch.mm` and by oneDNN (a 1x1 convolution; `GEMMS`: MKL takes its AVX2 path on AMD CPUs,
    so on this VM's AMD hosts oneDNN's is ~2x faster); the peak is the faster one;
  * per contender: GFLOP/s = img/s x FLOP/image, and its share of the GEMM peak (and of
    MKL's `torch.mm`, the yardstick issue 11 was written against);
  * where the rest goes: the shares of a step's time by kind of op (`step_profile`, once, in
    Ray's layout), and per contender the training process's context switches per timed step
    (`getrusage`; rank 0's process under DDP): Ray Train runs the loop in a thread of its
    worker, beside Ray's own threads.

Ray start-up, per ray_1x2 run: `ray.init` (through the launcher's `ray_session`, as the train
stage does), then `fit()` start -> worker entry -> first training step, and the fit's end. Every
round also runs an EMPTY 1-worker `TorchTrainer.fit()` (a worker function that returns at once)
in its own fresh Ray: Ray Train's own floor for start-up and teardown. Its worker also notes
when each of Ray's worker processes was started (the raylet's children, named by Ray's process
titles: Train's controller, its helper actors, the worker): where the floor goes.

The machine is shared and noisy, so rounds interleave everything: both GEMMs, plain, plain_cl,
plain_ddp, two_solo, ray_1x2, ray_ddp, empty fit, both GEMMs, plain, ... (`--repeats` rounds,
at least 3). Every figure is reported as the median with its min-max and the raw values in
run order; ratios are ratios of medians. Run it from the repo root inside a network namespace
(it starts Ray):

    unshare -n sh -c 'ip link set lo up; .venv/bin/python benchmarks/train_throughput.py'

Flags: --repeats 3 --warmup 10 --steps 100 --gemm-n 2048 --gemm-repeats 10 --data PATH --out PATH.
A smoke run: `--repeats 3 --warmup 1 --steps 3 --gemm-n 512 --out /tmp/tt.json`.
Writes benchmarks/results/train_throughput.json (`--out`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DistributedSampler
from torch.utils.flop_counter import FlopCounterMode

from pipeline.config import Params, load_params
from pipeline.io import write_json
from pipeline.models import build_models, unwrap
from pipeline.train.data import DeviceArrays, load_train_arrays
from pipeline.train.ema import GeneratorEMA
from pipeline.train.loop import DDP_OPTIONS, make_optimizers, run_epoch

import host  # a sibling script (benchmarks/ is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
THREADS = 2  # every contender uses the machine's 2 cores; GEMM peak: 2 threads
CONTENDERS = {"plain": "plain torch 1x2 threads",
              "plain_cl": "plain torch 1x2 threads, channels_last",
              "plain_ddp": "plain torch DDP 2 processes x 1 thread",
              "two_solo": "2 processes x 1 thread, half a batch each, no DDP",
              "ray_1x2": "Ray Train 1 worker x 2 threads",
              "ray_ddp": "Ray Train DDP 2 workers x 1 thread"}
LAYOUTS = {"ray_1x2": (1, 2), "ray_ddp": (2, 1)}  # (workers, threads per worker)
SWITCHES = ("voluntary_switches_per_step", "involuntary_switches_per_step")  # timed_steps'


def load_data(path: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """Images uint8 (N, H, W, C) and labels (N,): `path` if it exists, else sklearn digits."""
    if path.is_file():
        arrays = load_train_arrays(path)
        resolved = path.resolve()  # committed results hold no absolute path
        return arrays.images, arrays.labels, str(
            resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else resolved)
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images[:, None].astype(np.float32) / 16.0)  # (N, 1, 8, 8)
    x = nn.functional.interpolate(x, size=28, mode="bilinear", align_corners=False)
    images = (x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()  # (N, 28, 28, 1)
    return images, d.target.astype(np.int64), f"sklearn digits upscaled to 28 px ({path} absent)"


def gan_steps(params: Params, images: np.ndarray, labels: np.ndarray, steps: int, *,
              channels_last: bool = False, rank: int = 0, world: int = 1,
              prepare: Callable[[nn.Module], nn.Module] = lambda m: m,
              on_step: Callable[[int, int], None] | None = None) -> None:
    """Build G, D and Adam as the train stage's worker does, then train `steps` GAN steps
    (cycling epochs) with `run_epoch` on this rank's share of the global batch: the worker's
    step (params.yaml's loss, mode seeking, R1, DiffAugment, critic steps, rank 0's EMA)."""
    device = torch.device("cpu")
    model, train = params.model, params.train
    torch.manual_seed(params.seed)  # identical init on every rank
    num_classes = int(labels.max()) + 1
    G, D = build_models(model.model_dump(), (images.shape[3], images.shape[1], images.shape[2]),
                        num_classes)
    if channels_last:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    G, D = prepare(G), prepare(D)
    opt_g, opt_d = make_optimizers(G, D, train)
    ema = GeneratorEMA(unwrap(G), train.ema_decay) if rank == 0 and train.ema_decay else None
    data = DeviceArrays.on(device, images, labels)
    sampler = DistributedSampler(range(len(images)), num_replicas=world, rank=rank,
                                 shuffle=True, seed=params.seed, drop_last=True)
    done, epoch = 0, 0
    while done < steps:
        epoch += 1
        sampler.set_epoch(epoch)
        stats, _ = run_epoch(
            G, D, opt_g, opt_d,
            data.batches(list(sampler), train.batch_size // world, channels_last),
            epoch=epoch, latent_dim=model.latent_dim,
            num_classes=num_classes if model.conditional else 0,  # as loop.train_worker
            noise=torch.Generator(device=device).manual_seed(epoch * 1024 + rank),
            device=device, precision=train.precision, loss=train.loss, r1_gamma=train.r1_gamma,
            diffaugment=train.diffaugment, ema=ema, mode_seeking=train.mode_seeking,
            n_critic=train.n_critic or 1, max_steps=steps - done, on_step=on_step)
        done += stats["steps"]


def timed_steps(params: Params, images: np.ndarray, labels: np.ndarray, warmup: int, steps: int,
                **kwargs: Any) -> dict[str, float]:
    """`gan_steps(warmup + steps)`; images/s over the steps after the warm-up, the process's
    context switches per timed step (voluntary: a thread waited; involuntary: one was
    preempted), and the wall clock of the first step and of the end (compared with the Ray
    driver's clock)."""
    marks: dict[str, float] = {}
    usage: list[resource.struct_rusage] = []
    done = 0

    def on_step(_epoch: int, _step: int) -> None:
        nonlocal done
        if done == 0:
            marks["first_step"] = time.time()
        if done == warmup:
            usage.append(resource.getrusage(resource.RUSAGE_SELF))
            marks["t0"] = time.perf_counter()
        done += 1

    gan_steps(params, images, labels, warmup + steps, on_step=on_step, **kwargs)
    seconds = time.perf_counter() - marks["t0"]
    end = resource.getrusage(resource.RUSAGE_SELF)
    return {"images_per_s": steps * params.train.batch_size / seconds, "seconds": seconds,
            "voluntary_switches_per_step": (end.ru_nvcsw - usage[0].ru_nvcsw) / steps,
            "involuntary_switches_per_step": (end.ru_nivcsw - usage[0].ru_nivcsw) / steps,
            "first_step": marks["first_step"], "end": time.time()}


def flop_per_image(params: Params, images: np.ndarray, labels: np.ndarray) -> float:
    """FLOP of one GAN step (D step + G step, forward + backward) per image, by the counter."""
    torch.set_num_threads(THREADS)
    counter = FlopCounterMode(display=False)
    with counter:
        gan_steps(params, images, labels, 1)
    return counter.get_total_flops() / params.train.batch_size


# Where a step's CPU time goes, by op (`step_profile`): self time of the ops whose names hold
# these words; the optimizer's ops by its own events' total time; the rest is "other".
OP_KINDS = {"convolution": ("convolution",), "batch_norm": ("batch_norm",),
            "activation": ("leaky_relu", "threshold", "tanh", "sigmoid")}


def step_profile(params: Params, images: np.ndarray, labels: np.ndarray, steps: int,
                 channels_last: bool) -> dict[str, float]:
    """Shares of `steps` GAN steps' CPU time (2 threads) by kind of op (`OP_KINDS`,
    "optimizer", "other"), by `torch.profiler`. 5 unprofiled steps first warm torch's kernels
    and allocator; the profiled call builds its own models, so its first step is cold."""
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(THREADS)
    gan_steps(params, images, labels, 5, channels_last=channels_last)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        gan_steps(params, images, labels, steps, channels_last=channels_last)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    shares = {kind: sum(e.self_cpu_time_total for e in events
                        if any(word in e.key for word in words)) / total
              for kind, words in OP_KINDS.items()}
    shares["optimizer"] = sum(e.cpu_time_total for e in events
                              if e.key.startswith("Optimizer.")) / total
    shares["other"] = 1 - sum(shares.values())
    return {kind: round(share, 3) for kind, share in shares.items()}


# The two fp32 GEMMs torch runs on CPU: `torch.mm` calls MKL; a 1x1 convolution of an n x n
# channels_last "image" (1, n, n, 1) by n filters is the same n x n by n x n product, run by
# oneDNN, which also runs every convolution of the step. MKL takes its AVX2 path on AMD CPUs
# (its AVX-512 kernels are for Intel's), oneDNN takes AVX-512 where the CPU has it: on this
# VM's AMD hosts oneDNN's GEMM is ~2x MKL's, and the step's big convolutions run faster than
# MKL's GEMM. The machine's peak is the faster of the two, measured in each round.
GEMMS = ("mkl_mm", "onednn_conv1x1")


def gemm_product(n: int, kind: str) -> Callable[[], torch.Tensor]:
    """One fp32 n x n by n x n product (`kind` in GEMMS) of two seeded random matrices a, b:
    mkl_mm returns a @ b; onednn_conv1x1 returns (a @ b.T).T as a (1, n, n, 1) image."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    if kind == "mkl_mm":
        out = torch.empty(n, n)
        product = functools.partial(torch.mm, a, b, out=out)
    elif kind == "onednn_conv1x1":  # a (1, n, n, 1) NHWC by b's n rows as 1x1 filters
        # (1, n, n, 1) with x[0, c, h, 0] = a[h, c]: a's own memory read as NHWC. (Strides
        # matter: a.t()[None, ..., None] has the same values but oneDNN ran it ~40 % slower.)
        x = a.view(1, n, 1, n).permute(0, 3, 1, 2)
        product = functools.partial(nn.functional.conv2d, x, b[:, :, None, None])
    else:
        raise ValueError(f"GEMM kind must be one of {GEMMS}, got {kind!r}")
    return product


def median_seconds(fn: Callable[[], Any], calls: int, warmup: int) -> float:
    """Median wall time of `calls` calls of `fn`, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gemm_gflops(n: int, repeats: int, kind: str) -> float:
    """fp32 GEMM rate with 2 threads (`kind` in GEMMS): the median over `repeats` n x n by
    n x n products of 2 n^3 / time (after one: thread pool, caches, oneDNN's kernel)."""
    torch.set_num_threads(THREADS)
    return 2 * n**3 / median_seconds(gemm_product(n, kind), repeats, warmup=1) / 1e9


def gemm_rates(n: int, repeats: int) -> dict[str, float]:
    """`gemm_gflops` of every kind in GEMMS, in GFLOP/s to 0.1."""
    return {kind: round(gemm_gflops(n, repeats, kind), 1) for kind in GEMMS}


def plain_run(params: Params, images: np.ndarray, labels: np.ndarray, warmup: int, steps: int,
              channels_last: bool) -> dict[str, float]:
    """plain / plain_cl: this process, 2 torch threads, the whole global batch per step."""
    torch.set_num_threads(THREADS)
    return timed_steps(params, images, labels, warmup, steps, channels_last=channels_last)


def _ddp_rank(rank: int, store: str, args: tuple[Any, ...], channels_last: bool,
              out: mp.Queue, ddp: bool = True) -> None:
    """One plain_ddp rank: gloo over a FileStore, 1 thread, G and D in DDP(**DDP_OPTIONS);
    with `ddp` False (two_solo), the same rank's half of the batch with no process group."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    try:
        torch.set_num_threads(1)
        if not ddp:
            out.put((rank, timed_steps(*args, channels_last=channels_last, rank=rank, world=2)))
            return
        dist.init_process_group("gloo", store=dist.FileStore(store, 2), rank=rank, world_size=2)
        try:
            result = timed_steps(*args, channels_last=channels_last, rank=rank, world=2,
                                 prepare=lambda m: DistributedDataParallel(m, **DDP_OPTIONS))
        finally:
            dist.destroy_process_group()
        out.put((rank, result))
    except Exception:  # noqa: BLE001 - the parent raises it
        out.put((rank, traceback.format_exc()))


def plain_ddp_run(params: Params, images: np.ndarray, labels: np.ndarray, warmup: int,
                  steps: int, channels_last: bool, ddp: bool = True) -> dict[str, float]:
    """plain_ddp: 2 spawned processes x 1 thread; rank 0's images/s (the global batch's).
    With `ddp` False (two_solo): the same two processes at the same time, each training on
    its half of every batch alone (no gradient all-reduce, no rank waiting for the other):
    what DDP's compute could reach here. A rank that fails raises here, with its traceback."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="rgf-ddp-") as tmp:
        procs = [ctx.Process(target=_ddp_rank, args=(
            rank, str(Path(tmp) / "store"), (params, images, labels, warmup, steps),
            channels_last, out, ddp)) for rank in (0, 1)]
        for proc in procs:
            proc.start()
        try:
            results = dict(out.get(timeout=600) for _ in procs)
        finally:
            for proc in procs:
                proc.join(60)
                if proc.is_alive():
                    proc.kill()
                    proc.join(5)
    for rank, result in sorted(results.items()):
        if isinstance(result, str):
            raise RuntimeError(f"plain_ddp rank {rank} failed:\n{result}")
    return results[0]


def _ray_worker(config: dict[str, Any]) -> None:
    entry = time.time()
    import logging

    import ray
    import ray.train
    import ray.train.torch
    from ray.train.v2._internal.execution import context as train_context

    # As the launcher's worker: Ray Train logs every report at INFO under this logger name.
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    torch.set_num_threads(config["threads"])
    ctx = ray.train.get_context()
    out = timed_steps(config["params"], ray.get(config["images"]), ray.get(config["labels"]),
                      config["warmup"], config["steps"], channels_last=config["channels_last"],
                      rank=ctx.get_world_rank(), world=ctx.get_world_size(),
                      prepare=functools.partial(ray.train.torch.prepare_model,
                                                parallel_strategy_kwargs=DDP_OPTIONS))
    out["entry"] = entry
    # Ray Train V2 keeps reported metrics only together with a checkpoint: rank 0 attaches one.
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "timing.json").write_text(json.dumps(out))
        ckpt = ray.train.Checkpoint.from_directory(tmp) if ctx.get_world_rank() == 0 else None
        ray.train.report(out, checkpoint=ckpt)


def _empty_worker(config: dict[str, Any]) -> None:
    """Returns at once; leaves in a file its entry time and when each of Ray's worker processes
    (its raylet's children: Train's controller, helper actors, this worker) was started (no
    report: that would add a checkpoint)."""
    entry = time.time()
    import psutil

    started: dict[str, list[float]] = {}
    for proc in psutil.Process().parent().children():
        with contextlib.suppress(psutil.Error):
            title = " ".join(proc.cmdline()).strip()  # Ray's title: "ray::<Actor>.<method>"
            if title.startswith("ray::"):
                name = title.removeprefix("ray::").split(".")[0].split()[0]
                started.setdefault(name, []).append(proc.create_time())
    Path(config["marks"], f"{os.getpid()}.json").write_text(
        json.dumps({"entry": entry, "started": started}))


def _fit(params: Params, worker: Callable[[dict[str, Any]], None],
         config: Callable[[], dict[str, Any]], workers: int, threads: int,
         ) -> tuple[dict[str, Any], dict[str, float]]:
    """A fresh local Ray (`ray_session`), then one TorchTrainer fit of `worker` over `workers`
    workers of `threads` CPUs with `config()` (built inside the session: it may `ray.put`).
    Returns (rank 0's metrics, driver wall-clock marks: init_s, put_s, fit_start, fit_end)."""
    from ray.train import LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline.train.launcher import ray_session

    local = params.model_copy(update={"ray": params.ray.model_copy(
        update={"address": None, "num_workers": workers, "cpus_per_worker": threads})})
    storage = tempfile.mkdtemp(prefix="rgf-bench-")
    marks: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        with ray_session(local):
            marks["init_s"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            loop_config = config()
            marks["put_s"] = time.perf_counter() - t1
            marks["fit_start"] = time.time()
            result = TorchTrainer(
                worker, train_loop_config=loop_config,
                scaling_config=ScalingConfig(num_workers=workers,
                                             resources_per_worker={"CPU": threads}),
                run_config=RunConfig(name="bench", storage_path=storage,
                                     logging_config=LoggingConfig(log_level="ERROR"))).fit()
            marks["fit_end"] = time.time()
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    return result.metrics or {}, marks


def ray_run(params: Params, images: np.ndarray, labels: np.ndarray, warmup: int, steps: int,
            channels_last: bool, workers: int, threads: int) -> dict[str, float]:
    """ray_1x2 / ray_ddp: training in a fresh Ray, with its start-up broken down (seconds)."""
    import ray

    metrics, m = _fit(params, _ray_worker, lambda: {
        "params": params, "images": ray.put(images), "labels": ray.put(labels),
        "warmup": warmup, "steps": steps, "channels_last": channels_last,
        "threads": threads}, workers, threads)
    return {**{k: metrics[k] for k in SWITCHES}, "images_per_s": metrics["images_per_s"],
            "ray_init_s": m["init_s"], "ray_put_s": m["put_s"],
            "fit_start_to_worker_entry_s": metrics["entry"] - m["fit_start"],
            "worker_entry_to_first_step_s": metrics["first_step"] - metrics["entry"],
            "fit_start_to_first_step_s": metrics["first_step"] - m["fit_start"],
            "last_step_to_fit_end_s": m["fit_end"] - metrics["end"],
            "fit_total_s": m["fit_end"] - m["fit_start"]}


def empty_fit_run(params: Params) -> dict[str, Any]:
    """An empty fit in the ray_1x2 layout in a fresh Ray: Ray Train's floor (seconds), and
    when each Ray process it used was started, relative to fit() (< 0: started by ray.init)."""
    marks_dir = Path(tempfile.mkdtemp(prefix="rgf-marks-"))
    try:
        _, m = _fit(params, _empty_worker, lambda: {"marks": str(marks_dir)},
                    *LAYOUTS["ray_1x2"])
        marks = [json.loads(p.read_text()) for p in marks_dir.glob("*.json")]
    finally:
        shutil.rmtree(marks_dir, ignore_errors=True)
    last = max(mark["entry"] for mark in marks)  # the fit can only train once every worker is in
    started = {name: round(min(times) - m["fit_start"], 2)
               for name, times in marks[0]["started"].items()}
    return {"ray_init_s": m["init_s"], "empty_fit_s": m["fit_end"] - m["fit_start"],
            "fit_start_to_workers_entry_s": last - m["fit_start"],
            "workers_return_to_fit_end_s": m["fit_end"] - last,
            "process_started_s": dict(sorted(started.items(), key=lambda kv: kv[1]))}


def summary(values: list[float], digits: int = 1) -> dict[str, Any]:
    """Median with min-max and every raw value, in run order."""
    return {"median": round(statistics.median(values), digits),
            "min": round(min(values), digits), "max": round(max(values), digits),
            "runs": [round(v, digits) for v in values]}


def machine() -> dict[str, Any]:
    """`host.machine` with the architecture, Python's version and Ray's."""
    import ray

    return host.machine(machine=platform.machine(), python=platform.python_version(),
                        ray=ray.__version__)


def contender_result(runs: list[dict[str, float]], flop: float,
                     gemm: dict[str, float]) -> dict[str, Any]:
    """img/s and GFLOP/s (median, min-max, runs), the median's share of the GEMM peak (the
    faster GEMM's median) and of MKL's `torch.mm`, and the context switches per step of the
    (rank 0) training process."""
    ips = [r["images_per_s"] for r in runs]
    gflops = summary([v * flop / 1e9 for v in ips])
    return {"images_per_s": summary(ips), "gflop_per_s": gflops,
            "fraction_of_gemm_peak": round(gflops["median"] / max(gemm.values()), 3),
            "fraction_of_mkl_mm": round(gflops["median"] / gemm["mkl_mm"], 3),
            **{key: summary([r[key] for r in runs]) for key in SWITCHES}}


def print_summary(r: dict[str, Any]) -> None:
    def mm(s: dict[str, Any], unit: str = "") -> str:
        return f"{s['median']}{unit} ({s['min']}-{s['max']})"

    print(f"\nFLOP/image: {r['flop_per_image'] / 1e6:.1f} M (D step + G step, fwd + bwd)")
    print("step CPU time by op: " + ", ".join(
        f"{kind} {100 * share:.1f} %"
        for kind, share in r["step_cpu_time_by_op"]["shares"].items()))
    g = r["gemm"]
    print(f"GEMM fp32 {g['n']}^2, 2 threads: " + ", ".join(
        f"{kind} {mm(g['gflop_per_s'][kind])} GFLOP/s" for kind in GEMMS)
        + f"; peak {g['peak']} -> ceiling {g['ceiling_images_per_s']:.0f} img/s")
    for name, label in CONTENDERS.items():
        c = r["contenders"][name]
        print(f"{label:<40} {mm(c['images_per_s'])} img/s  {c['gflop_per_s']['median']} GFLOP/s"
              f"  {100 * c['fraction_of_gemm_peak']:.1f} % of peak "
              f"({100 * c['fraction_of_mkl_mm']:.1f} % of mkl_mm)  context switches/step: "
              f"{c[SWITCHES[0]]['median']} voluntary, {c[SWITCHES[1]]['median']} involuntary")
    for k, v in r["ratios_of_medians"].items():
        print(f"{k}: {v}x")
    s = r["startup"]
    print(f"Ray start-up: ray.init {mm(s['ray_init_s'], ' s')} + fit start -> first step "
          f"{mm(s['fit_start_to_first_step_s'], ' s')} [-> worker entry "
          f"{mm(s['fit_start_to_worker_entry_s'], ' s')}, entry -> first step "
          f"{mm(s['worker_entry_to_first_step_s'], ' s')}] = {mm(s['total_s'], ' s')}")
    print(f"Ray Train floor (empty fit, fresh Ray): ray.init {mm(s['empty_ray_init_s'], ' s')}, "
          f"fit {mm(s['empty_fit_s'], ' s')} [start -> workers in "
          f"{mm(s['empty_fit_start_to_workers_entry_s'], ' s')}, return -> end "
          f"{mm(s['empty_fit_workers_return_to_end_s'], ' s')}]")
    print("  its processes, started at fit() + " + ", ".join(
        f"{name} {mm(t, ' s')}" for name, t in s["empty_fit_process_started_s"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds (>= 3)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--gemm-n", type=int, default=2048, help="GEMM peak: n x n fp32 mm")
    parser.add_argument("--gemm-repeats", type=int, default=10, help="products per round")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "prepared" / "train.npz")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks" / "results" / "train_throughput.json")
    args = parser.parse_args()
    if args.repeats < 3:
        parser.error("--repeats: at least 3 runs of each contender")
    params = load_params(ROOT / "params.yaml")
    images, labels, source = load_data(args.data)
    ray_cl = params.train.channels_last
    print(f"data: {source} {images.shape}; ray channels_last={ray_cl}", flush=True)
    flop = flop_per_image(params, images, labels)
    print(f"FLOP/image: {flop / 1e6:.1f} M", flush=True)
    profile_steps = 40
    shares = step_profile(params, images, labels, profile_steps, ray_cl)
    print(f"step CPU time by op: {shares}", flush=True)

    common = (params, images, labels, args.warmup, args.steps)
    runners = {"plain": functools.partial(plain_run, *common, channels_last=False),
               "plain_cl": functools.partial(plain_run, *common, channels_last=True),
               "plain_ddp": functools.partial(plain_ddp_run, *common, channels_last=ray_cl),
               "two_solo": functools.partial(plain_ddp_run, *common, channels_last=ray_cl,
                                             ddp=False),
               **{name: functools.partial(ray_run, *common, channels_last=ray_cl,
                                          workers=w, threads=t)
                  for name, (w, t) in LAYOUTS.items()},
               "empty_fit": functools.partial(empty_fit_run, params)}
    # Interleaved rounds: a load spike from other processes hits every contender alike.
    gemm: dict[str, list[float]] = {kind: [] for kind in GEMMS}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in runners}
    order: list[dict[str, Any]] = []
    for i in range(args.repeats):
        for kind, rate in gemm_rates(args.gemm_n, args.gemm_repeats).items():
            gemm[kind].append(rate)
            order.append({"contender": kind, "gflop_per_s": rate})
            print(f"[{i + 1}/{args.repeats}] {kind}: {rate:.1f} GFLOP/s", flush=True)
        for name, run in runners.items():
            load = os.getloadavg()[0]
            out = run()
            runs[name].append(out)
            value = out.get("images_per_s", out.get("empty_fit_s"))
            unit = "img/s" if "images_per_s" in out else "s"
            order.append({"contender": name, unit: round(value, 2),
                          "load_average_1min_before": round(load, 2)})
            print(f"[{i + 1}/{args.repeats}] {name}: {value:.1f} {unit} (load {load:.2f})",
                  flush=True)

    gemm_medians = {kind: statistics.median(values) for kind, values in gemm.items()}
    peak_kind = max(gemm_medians, key=gemm_medians.__getitem__)
    contenders = {name: contender_result(runs[name], flop, gemm_medians) for name in CONTENDERS}
    med = {name: c["images_per_s"]["median"] for name, c in contenders.items()}
    ray_, empty = runs["ray_1x2"], runs["empty_fit"]

    def seconds(rs: list[dict[str, Any]], key: str) -> dict[str, Any]:
        return summary([r[key] for r in rs], 2)

    result = {
        "machine": machine(),
        "command": host.command_line("train_throughput.py", sys.argv[1:], netns=True),
        "data": source, "image_shape": list(images.shape[1:]),
        "model": params.model.model_dump(), "precision": params.train.precision,
        "global_batch": params.train.batch_size, "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "repeats": args.repeats,
        "order": "interleaved rounds: mkl_mm, onednn_conv1x1, plain, plain_cl, plain_ddp, "
                 "two_solo, ray_1x2, ray_ddp, empty_fit, mkl_mm, ...",
        "flop_per_image": round(flop),
        "flop_counter": "torch.utils.flop_counter.FlopCounterMode over one run_epoch step "
                        f"(D step + G step, forward + backward) at batch "
                        f"{params.train.batch_size}",
        "step_cpu_time_by_op": {
            "shares": shares,
            "how": f"torch.profiler over {profile_steps} plain steps (2 threads, channels_last="
                   f"{ray_cl} as Ray's), self CPU time of the ops named {OP_KINDS}; optimizer: "
                   "its events' total time; other: the rest"},
        "gemm": {"n": args.gemm_n, "repeats_per_round": args.gemm_repeats, "threads": THREADS,
                 "dtype": "float32",
                 "gflop_per_s": {kind: summary(values) for kind, values in gemm.items()},
                 "peak": peak_kind,
                 "ceiling_images_per_s": round(gemm_medians[peak_kind] * 1e9 / flop, 1),
                 "how": "mkl_mm: torch.mm (MKL); onednn_conv1x1: the same product as a 1x1 "
                        "convolution of an NHWC (1, n, n, 1) image (oneDNN, as the step's "
                        "convolutions); peak: the kind with the higher median; every "
                        "contender's fraction_of_gemm_peak is against that median, "
                        "fraction_of_mkl_mm against torch.mm's"},
        "contenders": {name: {"label": CONTENDERS[name], **c} for name, c in contenders.items()},
        "ray_channels_last": ray_cl,
        "ratios_of_medians": {
            "ray_1x2_over_plain": round(med["ray_1x2"] / med["plain"], 3),
            "ray_1x2_over_plain_cl": round(med["ray_1x2"] / med["plain_cl"], 3),
            "ray_ddp_over_plain": round(med["ray_ddp"] / med["plain"], 3),
            "ray_ddp_over_plain_cl": round(med["ray_ddp"] / med["plain_cl"], 3),
            "ray_ddp_over_plain_ddp": round(med["ray_ddp"] / med["plain_ddp"], 3),
            "plain_ddp_over_plain": round(med["plain_ddp"] / med["plain"], 3),
            "plain_ddp_over_plain_cl": round(med["plain_ddp"] / med["plain_cl"], 3),
            "plain_cl_over_plain": round(med["plain_cl"] / med["plain"], 3),
            "two_solo_over_plain_cl": round(med["two_solo"] / med["plain_cl"], 3),
            "plain_ddp_over_two_solo": round(med["plain_ddp"] / med["two_solo"], 3)},
        "startup": {
            "ray_init_s": seconds(ray_, "ray_init_s"),
            "ray_put_s": seconds(ray_, "ray_put_s"),
            "fit_start_to_worker_entry_s": seconds(ray_, "fit_start_to_worker_entry_s"),
            "worker_entry_to_first_step_s": seconds(ray_, "worker_entry_to_first_step_s"),
            "fit_start_to_first_step_s": seconds(ray_, "fit_start_to_first_step_s"),
            "total_s": summary([r["ray_init_s"] + r["ray_put_s"] + r["fit_start_to_first_step_s"]
                                for r in ray_], 2),
            "last_step_to_fit_end_s": seconds(ray_, "last_step_to_fit_end_s"),
            "fit_total_s": seconds(ray_, "fit_total_s"),
            "empty_ray_init_s": seconds(empty, "ray_init_s"),
            "empty_fit_s": seconds(empty, "empty_fit_s"),
            "empty_fit_start_to_workers_entry_s": seconds(empty, "fit_start_to_workers_entry_s"),
            "empty_fit_workers_return_to_end_s": seconds(empty, "workers_return_to_fit_end_s"),
            # Where the floor goes: Ray Train starts its helpers one after another, each a new
            # Python process that imports Ray (and the worker torch) before the next can start.
            "empty_fit_process_started_s": {
                name: summary([r["process_started_s"][name] for r in empty
                               if name in r["process_started_s"]], 2)
                for name in empty[0]["process_started_s"]},
            "explanation": "total_s = ray.init + ray.put + fit() start -> first step; the empty "
                           "fit (fresh Ray, a worker that returns at once) is Ray Train's floor: "
                           "start -> every worker in, then worker return -> fit() returns; "
                           "empty_fit_process_started_s: when each Ray process the empty fit "
                           "used was started, seconds after fit() (< 0: by ray.init)"},
        "runs_in_order": order,
        "load_average_1min_after": round(os.getloadavg()[0], 2),
    }
    write_json(args.out, result)
    print_summary(result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
