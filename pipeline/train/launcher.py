"""Ray Train launcher for the GAN: the only module that imports Ray.

`train(params, data, models_dir, metrics_dir)` (what `stages/train.py` calls):
  1. reads `train.npz`, names the run `gan-<hash of model, train, seed, workers, gpu, data>` so a
     rerun of the same stage RESUMES from its last checkpoint (Ray Train V2: same RunConfig
     name + storage_path), and opens (or reopens) the run's one MLflow run;
  2. starts an embedded local Ray (or connects to `ray.address` / `$RAY_ADDRESS`), ships the
     arrays through the object store and runs `pipeline.train.loop.train_worker` on every
     worker under a `TorchTrainer` (DDP, gloo on CPU / NCCL on GPU);
  3. copies the final checkpoint's weights to `models/{generator,discriminator}.pt`, the epoch
     log and sample grids to `metrics/`, and writes `metrics/train.json` and `models/run.json`.

On this machine anything that starts Ray runs inside `unshare -n sh -c 'ip link set lo up; ...'`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from pipeline.cluster import check_shared_storage, copy_file, is_uri, read_bytes, storage_root
from pipeline.config import Params, flatten, params_hash
from pipeline.errors import UserError
from pipeline.io import atomic_dir, write_json
from pipeline.models import load_checkpoint, make_checkpoint, save_checkpoint
from pipeline.tracking import Tracker, run_tags, run_url
from pipeline.train.data import TrainArrays, load_train_arrays
from pipeline.train.loop import (
    LOG_FIELDS,
    STATE_FILE,
    Hooks,
    NonFiniteLossError,
    WorkerConfig,
    train_worker,
    write_log,
)

# Test-only fault injection: "epoch:step:rank:/marker/file" SIGKILLs that worker once.
FAULT_ENV = "GAN_FORENSICS_FAULT_KILL"


def code_hash() -> str:
    """sha256 of the training code (the train stage's code deps): a code change starts a fresh
    run instead of resuming checkpoints the old code wrote."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parents[1]
    for path in sorted([*(package / "models").glob("*.py"), *(package / "train").glob("*.py")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def run_name(params: Params, data_sha256: str) -> str:
    """`gan-<12 hex>`: equal for equal training inputs, so a rerun resumes the same Ray run."""
    return "gan-" + params_hash(params.model, params.train, extra={
        "seed": params.seed, "num_workers": params.ray.num_workers,
        "use_gpu": params.ray.use_gpu, "data_sha256": data_sha256, "code": code_hash()})


def _worker_entry(config: dict[str, Any]) -> None:
    """`train_loop_per_worker`: Ray specifics here, the training itself in `loop.py`."""
    import ray
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    torch.set_num_threads(config["threads"])
    rank = ray.train.get_context().get_world_rank()

    def report(metrics: dict[str, Any], ckpt_dir: Path | None) -> None:
        ckpt = Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir is not None else None
        ray.train.report(metrics, checkpoint=ckpt)  # a barrier: every rank calls it

    @contextlib.contextmanager
    def restore() -> Iterator[Path | None]:
        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            yield None
            return
        with ckpt.as_directory() as path:
            yield Path(path)

    hooks = Hooks(rank=rank, device=ray.train.torch.get_device(),
                  prepare_model=ray.train.torch.prepare_model, report=report, restore=restore)
    try:
        train_worker(config["cfg"], ray.get(config["images"]), ray.get(config["labels"]),
                     config["class_names"], hooks)
    except NonFiniteLossError as exc:
        # Every rank stops at the same step (per-step stats are all-reduced). Return instead of
        # raising: Ray would retry a raised error `max_failures` times, diverging each time.
        # V2 keeps metrics only with checkpoints, so the driver learns it from storage.
        if rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "error.txt").write_text(str(exc))
                copy_file(str(Path(tmp) / "error.txt"), config["error_file"])


@contextlib.contextmanager
def ray_session(params: Params) -> Iterator[str]:
    """Connect to `ray.address` / `$RAY_ADDRESS`, else start an embedded local Ray (stopped on
    exit, with a private short temp dir). An already initialised Ray (tests) is used as is."""
    import ray

    if ray.is_initialized():
        yield ray.get_runtime_context().gcs_address
        return
    address = params.ray.address or os.environ.get("RAY_ADDRESS")
    temp_dir = None
    # ray.init installs a C++ handler that turns SIGTERM into an abort (no cleanup, cluster
    # left behind); keep the caller's Python handler (the stage's: unwind like Ctrl-C).
    on_term = signal.getsignal(signal.SIGTERM)
    # Ray's own loggers in workers/actors at ERROR: without a dashboard, Train V2's
    # PlacementGroupCleaner warns every few seconds that the state API is unavailable. Our
    # epoch lines are prints, so they still reach the driver.
    quiet = ray.LoggingConfig(encoding="TEXT", log_level="ERROR")
    if address:
        ray.init(address=address, logging_level=logging.WARNING, logging_config=quiet)
    else:
        temp_dir = tempfile.mkdtemp(prefix="rgf-", dir="/tmp")  # unix sockets: short paths
        ray.init(num_cpus=params.ray.num_workers * params.ray.cpus_per_worker,
                 include_dashboard=False, logging_level=logging.WARNING, _temp_dir=temp_dir,
                 logging_config=quiet)
    if callable(on_term) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_term)
    try:
        yield address or "local"
    finally:
        ray.shutdown()
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _check_cluster(params: Params, storage: str) -> None:
    import ray

    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    check_shared_storage(storage, nodes)
    gpus = ray.cluster_resources().get("GPU", 0)
    if params.ray.use_gpu and gpus < params.ray.num_workers:
        raise UserError(f"ray.use_gpu: {params.ray.num_workers} workers need as many GPUs; "
                        f"the Ray cluster has {gpus:g}")


def _open_tracker(params: Params, name: str, storage: str, arrays: TrainArrays, data: str,
                  address: str) -> Tracker:
    """The model's MLflow run: reopened when this Ray run was started before (resume)."""
    from pipeline.tracking import tracking_uri

    uri = tracking_uri(params.mlflow)
    key = f"{storage}/{name}.mlflow.json"  # beside Ray's run directory, keyed by run name
    with contextlib.suppress(UserError, ValueError, KeyError):
        info = json.loads(read_bytes(key)) if is_uri(key) or Path(key).is_file() else None
        if info and info["tracking_uri"] == uri:
            tracker = Tracker.resume(uri, info["run_id"], info["experiment_id"])
            if tracker is not None:
                print(f"resuming MLflow run {tracker.run_id}", flush=True)
                return tracker
    world = params.ray.num_workers
    tags = run_tags(**{"world_size": world, "device": "cuda" if params.ray.use_gpu else "cpu",
                       "ray.address": address, "ray.run_name": name,
                       "data.sha256": arrays.sha256})
    tracker = Tracker.start(params.mlflow, name, flatten(params), tags)
    tracker.log_dataset("train", data, "training", arrays.sha256, len(arrays.images))
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "run.json"
        write_json(local, {"run_id": tracker.run_id, "experiment_id": tracker.experiment_id,
                           "tracking_uri": uri})
        copy_file(str(local), key)
    return tracker


def _fault_from_env() -> dict[str, Any] | None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    epoch, step, rank, marker = spec.split(":", 3)
    return {"epoch": int(epoch), "step": int(step), "rank": int(rank), "marker": marker}


def _fit(params: Params, name: str, storage: str, arrays: TrainArrays, metrics_dir: Path,
         tracker: Tracker, log_level: str = "WARNING") -> Any:
    import ray
    from ray.train import (
        CheckpointConfig,
        FailureConfig,
        LoggingConfig,
        RunConfig,
        ScalingConfig,
    )
    from ray.train.torch import TorchConfig, TorchTrainer

    rc = params.ray
    cfg = WorkerConfig(model=params.model, train=params.train, seed=params.seed,
                       world_size=rc.num_workers, metrics_dir=str(metrics_dir.resolve()),
                       tracking={"uri": tracker.uri, "run_id": tracker.run_id,
                                 "experiment_id": tracker.experiment_id},
                       kill_at=_fault_from_env())
    trainer = TorchTrainer(
        _worker_entry,
        train_loop_config={"cfg": cfg, "images": ray.put(arrays.images),
                           "labels": ray.put(arrays.labels), "class_names": arrays.class_names,
                           "threads": rc.cpus_per_worker,
                           "error_file": f"{storage}/{name}.error.txt"},
        torch_config=TorchConfig(backend="nccl" if rc.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=rc.num_workers, use_gpu=rc.use_gpu,
                                     resources_per_worker={"CPU": rc.cpus_per_worker}),
        run_config=RunConfig(name=name, storage_path=storage,
                             failure_config=FailureConfig(max_failures=rc.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=rc.keep_checkpoints),
                             # One line per epoch (ours): Ray Train's per-report INFO lines and,
                             # without a dashboard, its state-API warnings are noise here.
                             logging_config=LoggingConfig(log_level=log_level),
                             worker_runtime_env={"env_vars": {"TORCH_CPP_LOG_LEVEL": "ERROR"}}),
    )
    return trainer.fit()


def _remove(location: str) -> None:
    import pyarrow.fs as pafs

    fs, path = (pafs.FileSystem.from_uri(location) if is_uri(location)
                else (pafs.LocalFileSystem(), location))
    with contextlib.suppress(FileNotFoundError, OSError):
        fs.delete_file(path)


def _raise_worker_error(error_file: str) -> None:
    """A user-facing error a worker left in storage (NaN loss) becomes one UserError line."""
    try:
        message = read_bytes(error_file).decode()
    except UserError:  # no such file: the workers finished normally
        return
    raise UserError(message)


def _loss_plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in ("loss_d", "loss_g"):
        ax.plot(epochs, [r[key] for r in rows], marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _export(ckpt_dir: Path, models_dir: Path, metrics_dir: Path) -> list[dict[str, Any]]:
    """Final checkpoint -> models/{generator,discriminator}.pt, metrics/train_log.csv, samples."""
    state = load_checkpoint(ckpt_dir / STATE_FILE)
    meta = {k: state[k] for k in ("model_config", "image_shape", "num_classes", "class_names",
                                  "epoch", "step")}
    save_checkpoint(models_dir / "generator.pt",
                    make_checkpoint(**meta, generator=state["generator"]))
    save_checkpoint(models_dir / "discriminator.pt",
                    make_checkpoint(**meta, discriminator=state["discriminator"]))
    history = list(state["history"])
    write_log(history, metrics_dir / "train_log.csv")
    with atomic_dir(metrics_dir / "samples") as tmp:
        shutil.copytree(ckpt_dir / "samples", tmp, dirs_exist_ok=True)
    return history


def _log_generator(tracker: Tracker, path: Path, registered_model: str) -> str | None:
    """Log G as an MLflow model (signature + input example) and register it; its version."""
    from pipeline.models import load_generator
    from pipeline.models.serving import Sampler

    generator, meta = load_generator(path)
    cfg = meta["model_config"]
    sampler = Sampler(generator, cfg["latent_dim"], cfg["conditional"])
    return tracker.log_pytorch_model(sampler, "generator", sampler.input_example(),
                                     registered_model)


def train(params: Params, data: str | Path, models_dir: Path, metrics_dir: Path,
          root: Path | None = None) -> dict[str, Any]:
    """Run (or resume) distributed GAN training; write the train stage's outs; return train.json."""
    rc = params.ray
    if rc.use_gpu and not (rc.address or os.environ.get("RAY_ADDRESS")) \
            and not torch.cuda.is_available():
        raise UserError("ray.use_gpu: true but torch sees no CUDA GPU here; set ray.use_gpu: "
                        "false (CPU profile) or point ray.address at a GPU cluster")
    arrays = load_train_arrays(data)
    name = run_name(params, arrays.sha256)
    storage = storage_root(rc.storage_path, root)
    if params.train.batch_size // rc.num_workers > len(arrays.images) // rc.num_workers:
        raise UserError(f"train.batch_size: {params.train.batch_size} is more than the "
                        f"{len(arrays.images)} training images")
    start = time.monotonic()
    with ray_session(params) as address:
        _check_cluster(params, storage)
        tracker = _open_tracker(params, name, storage, arrays, str(data), address)
        print(f"training run {name} ({rc.num_workers} workers); MLflow: "
              f"{run_url(tracker.uri, tracker.experiment_id, tracker.run_id)}", flush=True)
        status, failed = "FAILED", True
        error_file = f"{storage}/{name}.error.txt"
        _remove(error_file)  # a previous attempt's
        try:
            result = _fit(params, name, storage, arrays, metrics_dir, tracker,
                          "ERROR" if address == "local" else "WARNING")
            if result.error is not None:
                raise result.error
            _raise_worker_error(error_file)
            if result.checkpoint is None:
                raise UserError(f"{storage}/{name}: training produced no checkpoint")
            with result.checkpoint.as_directory() as ckpt_dir:
                history = _export(Path(ckpt_dir), models_dir, metrics_dir)
            last = history[-1]
            summary = {**{k: last[k] for k in LOG_FIELDS}, "world_size": rc.num_workers,
                       "run_name": name, "total_seconds": round(time.monotonic() - start, 2),
                       "mean_images_per_s": sum(r["images_per_s"] for r in history)
                       / len(history)}
            write_json(metrics_dir / "train.json", summary)
            _loss_plot(history, metrics_dir / "train_loss.png")
            version = _log_generator(tracker, models_dir / "generator.pt",
                                     params.mlflow.registered_model)
            tracker.write_run_file(models_dir / "run.json", run_name=name,
                                   world_size=rc.num_workers,
                                   registered_model=params.mlflow.registered_model,
                                   model_version=version)
            tracker.log_artifact(metrics_dir / "train_loss.png", "plots")
            tracker.log_metrics({"train/total_seconds": summary["total_seconds"]})
            status, failed = "FINISHED", False
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            try:
                tracker.close(status)
            except UserError:
                if not failed:  # otherwise the training error is the one to show
                    raise
    print(f"trained {last['epoch']} epochs in {summary['total_seconds']:.0f} s: loss_d="
          f"{last['loss_d']:.3f} loss_g={last['loss_g']:.3f} "
          f"{summary['mean_images_per_s']:.0f} img/s", flush=True)
    return summary
