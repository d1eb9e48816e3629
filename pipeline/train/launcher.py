"""Ray Train launcher for the GAN: the only module that imports Ray.

`train(params, data, models_dir, metrics_dir)` (what `stages/train.py` calls):
  1. reads `train.npz`, connects to Ray (an embedded local Ray, or `ray.address` /
     `$RAY_ADDRESS`), checks the cluster (GPUs, shared storage, a tracking server every node
     reaches) and resolves `ray.num_workers: auto`;
  2. names the run (`pipeline.train.identity`): a rerun with the same trajectory so far RESUMES
     from its last checkpoint (Ray Train V2: same RunConfig name + storage_path), and reopens the
     model's MLflow run (found by its tag `ray.run_name`);
  3. ships the arrays through the object store and runs `pipeline.train.loop.train_worker` on
     every worker under a `TorchTrainer` (DDP: gloo on CPU; NCCL for CUDA tensors with gloo
     for any CPU ones on GPU);
  4. exports the final checkpoint (`pipeline.train.export`) and registers the generator.

On this machine anything that starts Ray runs inside `unshare -n sh -c 'ip link set lo up; ...'`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from pipeline.cluster import (
    check_shared_storage,
    copy_file,
    exists,
    read_bytes,
    remove,
    storage_root,
)
from pipeline.config import DEFAULT_FAMILY, Params, flatten
from pipeline.errors import UserError
from pipeline.io import write_json
from pipeline.provenance import run_tags
from pipeline.run_page import train_summary
from pipeline.tracking import Tracker, run_url, tracking_uri
from pipeline.train.data import TrainArrays, split_path, training_arrays
from pipeline.train.export import export, register_generator
from pipeline.train.identity import run_name
from pipeline.train.loop import DDP_OPTIONS, LOG_FIELDS, Hooks, WorkerConfig, train_worker

# A fault for the fault-tolerance tests: `on_step(rank, epoch, step)`, see pipeline.train.faults.
Fault = Callable[[int, int, int], None]


def _worker_entry(config: dict[str, Any]) -> None:
    """`train_loop_per_worker`: Ray specifics here, the training itself in `loop.py`."""
    import ray
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint
    from ray.train.v2._internal.execution import context as train_context

    # Ray Train logs every report at INFO ("Reporting training result ..."), under a logger
    # named by its file path: keep one line per epoch (ours) in the driver's output.
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
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

    fault = config["fault"]
    prepare = functools.partial(ray.train.torch.prepare_model,
                                parallel_strategy_kwargs=DDP_OPTIONS)
    hooks = Hooks(rank=rank, device=ray.train.torch.get_device(),
                  prepare_model=prepare, report=report, restore=restore,
                  on_step=functools.partial(fault, rank) if fault else Hooks().on_step)
    try:
        train_worker(config["cfg"], ray.get(config["images"]), ray.get(config["labels"]),
                     config["class_names"], hooks)
    except UserError as exc:
        # A user-facing error (a NaN loss, epochs below the run's): every rank stops at the same
        # point. Return instead of raising: Ray would retry a raised error `max_failures` times,
        # failing the same way each time. V2 keeps metrics only with checkpoints, so the driver
        # learns it from storage.
        if rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "error.txt").write_text(str(exc))
                copy_file(str(Path(tmp) / "error.txt"), config["error_file"])


# Environment for the embedded local Ray (the user's own settings win). Ray's noise on a
# healthy run stays off the user's terminal, real errors still print:
#   * an embedded Ray is one machine, so its node address is the loopback one: Ray then skips
#     probing 8.8.8.8 for a "local IP" (in a network namespace that printed a "Failed to
#     determine local IP" warning). Ray reads this from RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0;
#   * one machine gets no preemption notices: Train V2's preemption watcher, whose actor only
#     logs a core_worker error about its restart arguments, is off (clusters keep it);
#   * its workers run at the stage's priority: Ray's default niceness 15 lets any other busy
#     process on the machine starve training;
#   * Train's controller polls its workers every 0.5 s instead of Ray's 2 s, so `fit()` returns
#     ~1 s after training ends instead of 1-3 s (benchmarks/ray_fit_end.py); a poll is a small
#     actor call, next to training steps of tens of milliseconds.
LOCAL_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
             "RAY_worker_niceness": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}


def _free_loopback_port(tries: int = 20) -> int:
    """A free port on 127.0.0.1 for the embedded Ray's GCS, never one of the ports Ray gives
    its other components by default: the dashboard agent's 52365 lies in Linux's ephemeral
    range, and Ray refuses to start when two of its components are given one port (seen once
    in CI: "dashboard_agent_http is trying to use a port number 52365 that is used by other
    components")."""
    from ray._private import ray_constants

    defaults = {ray_constants.DEFAULT_PORT, ray_constants.DEFAULT_DASHBOARD_PORT,
                ray_constants.DEFAULT_DASHBOARD_AGENT_LISTEN_PORT}
    for _ in range(tries):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in defaults:
            return port
    raise RuntimeError(f"no free loopback port outside Ray's defaults in {tries} tries")


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """`values` in os.environ where the user has not set them, restored on exit."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update({key: os.environ.get(key) or value for key, value in values.items()})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def ray_session(params: Params) -> Iterator[str]:
    """Connect to `ray.address` / `$RAY_ADDRESS`, else start an embedded local Ray (stopped on
    exit, with a private short temp dir, in `LOCAL_ENV`, its GCS on a free loopback port whose
    address its job's processes get as RAY_ADDRESS). An already initialised Ray (tests) is
    used as is."""
    address = params.ray.address or os.environ.get("RAY_ADDRESS")
    # Before Ray's first import: it reads some of LOCAL_ENV into module constants.
    with _environ({} if address else LOCAL_ENV):
        import ray

        if ray.is_initialized():
            yield ray.get_runtime_context().gcs_address
            return
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
            workers = params.ray.num_workers
            cpus = (workers * params.ray.cpus_per_worker if isinstance(workers, int)
                    else os.cpu_count() or 1)
            temp_dir = tempfile.mkdtemp(prefix="rgf-", dir="/tmp")  # unix sockets: short paths
            # The GCS port is chosen here (RAY_GCS_SERVER_PORT, the user's if set) so that the
            # job's workers and actors can be told their own cluster's address: Ray's lookups
            # that take no address (Train's placement-group cleaner asks the state API)
            # otherwise scan the machine for GCS processes, and fail with "Found multiple
            # active Ray instances" while another Ray runs on it (a second stage).
            with _environ({"RAY_GCS_SERVER_PORT": str(_free_loopback_port())}):
                own = f"127.0.0.1:{os.environ['RAY_GCS_SERVER_PORT']}"
                ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING,
                         _temp_dir=temp_dir, logging_config=quiet,
                         runtime_env={"env_vars": {"RAY_ADDRESS": own}})
        if callable(on_term) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_term)
        try:
            yield address or "local"
        finally:
            ray.shutdown()
            if temp_dir:
                shutil.rmtree(temp_dir, ignore_errors=True)


def resolve_workers(params: Params, resources: dict[str, float]) -> int:
    """`ray.num_workers`, with `auto` = one worker per GPU of the cluster (use_gpu), else as
    many as its CPUs hold at `cpus_per_worker` each. The global batch must split evenly, and a
    DP run (`train.dp`) must get one worker."""
    rc = params.ray
    if rc.num_workers != "auto":
        workers = int(rc.num_workers)
    elif rc.use_gpu:
        workers = int(resources.get("GPU", 0))
        if workers == 0:
            raise UserError("ray.num_workers: auto with ray.use_gpu found no GPU in the Ray "
                            "cluster; set ray.use_gpu: false or connect to a GPU cluster")
    else:
        workers = max(1, int(resources.get("CPU", 1) // rc.cpus_per_worker))
    if params.train.dp.enabled and workers > 1:  # an int > 1 is refused by the config already
        raise UserError(f"ray.num_workers: {rc.num_workers} means {workers} workers here, but "
                        "train.dp trains in one (its Poisson sampling and privacy accountant "
                        "are per process); set ray.num_workers: 1")
    if params.train.batch_size % workers:
        fit = params.train.batch_size // workers * workers
        raise UserError(f"train.batch_size: {params.train.batch_size} does not split evenly "
                        f"across {workers} workers (ray.num_workers: {rc.num_workers}); use a "
                        f"multiple of {workers}, e.g. {fit or workers}")
    return workers


def check_cluster(params: Params, storage: str, uri: str, workers: int) -> None:
    """Refuse, in one line, what would crash or lose results on this cluster."""
    import ray

    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    check_shared_storage(storage, nodes)
    if nodes > 1 and not uri.startswith(("http://", "https://", "databricks")):
        raise UserError(
            f"mlflow.tracking_uri: {uri} is a file on this machine, but the Ray cluster has "
            f"{nodes} nodes and rank 0, which logs the epochs, may run on another; point "
            "MLFLOW_TRACKING_URI (or mlflow.tracking_uri) at an MLflow server (http://...)")
    gpus = ray.cluster_resources().get("GPU", 0)
    if params.ray.use_gpu and gpus < workers:
        raise UserError(f"ray.use_gpu: {workers} workers need as many GPUs; "
                        f"the Ray cluster has {gpus:g}")


def _open_tracker(params: Params, name: str, storage: str, arrays: TrainArrays, data: str,
                  address: str, workers: int, family: str) -> Tracker:
    """The model's MLflow run: the run tagged `ray.run_name` when Ray has this run's checkpoints
    (a resume or an extension continues its history), else a new one (a zoo family's named
    `<name>@<family>`)."""
    if exists(f"{storage}/{name}"):
        tracker = Tracker.find(params.mlflow, "ray.run_name", name)
        if tracker is not None:
            print(f"continuing MLflow run {tracker.run_id}", flush=True)
            return tracker
    tags = run_tags(**{"world_size": workers, "device": "cuda" if params.ray.use_gpu else "cpu",
                       "ray.address": address, "ray.run_name": name,
                       "data.sha256": arrays.sha256, "zoo.family": family})
    tracker = Tracker.start(params.mlflow, name, flatten(params), tags,
                            suffix="" if family == DEFAULT_FAMILY else f"@{family}")
    tracker.log_dataset("train", data, "training", arrays.sha256, len(arrays.images))
    return tracker


def _fit(params: Params, name: str, storage: str, arrays: TrainArrays, tracker: Tracker,
         workers: int, fault: Fault | None, log_level: str) -> Any:
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
                       world_size=workers,
                       tracking={"uri": tracker.uri, "run_id": tracker.run_id,
                                 "experiment_id": tracker.experiment_id})
    trainer = TorchTrainer(
        _worker_entry,
        train_loop_config={"cfg": cfg, "images": ray.put(arrays.images),
                           "labels": ray.put(arrays.labels), "class_names": arrays.class_names,
                           "threads": rc.cpus_per_worker, "fault": fault,
                           "error_file": f"{storage}/{name}.error.txt"},
        # NCCL moves CUDA tensors; torch's NCCL group has no CPU backend, so any collective on
        # a CPU object (none in the loop today) goes through gloo instead of crashing.
        torch_config=TorchConfig(backend="cpu:gloo,cuda:nccl" if rc.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=rc.use_gpu,
                                     resources_per_worker={"CPU": rc.cpus_per_worker}),
        run_config=RunConfig(name=name, storage_path=storage,
                             failure_config=FailureConfig(max_failures=rc.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=rc.keep_checkpoints),
                             # One line per epoch (ours): Ray Train's per-report INFO lines and,
                             # without a dashboard, its state-API warnings are noise here; its
                             # print patch would echo every print a second time via logging.
                             logging_config=LoggingConfig(log_level=log_level),
                             worker_runtime_env={"env_vars": {
                                 "TORCH_CPP_LOG_LEVEL": "ERROR",
                                 "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}}),
    )
    return trainer.fit()


def _raise_worker_error(error_file: str) -> None:
    """A user-facing error a worker left in storage (NaN loss) becomes one UserError line."""
    try:
        message = read_bytes(error_file).decode()
    except UserError:  # no such file: the workers finished normally
        return
    raise UserError(message)


def train(params: Params, data: str | Path, models_dir: Path, metrics_dir: Path,
          root: Path | None = None, fault: Fault | None = None,
          family: str = DEFAULT_FAMILY) -> dict[str, Any]:
    """Run (or resume, or extend) distributed GAN training of `params` (zoo family `family`'s,
    see `load_params(family=...)`); write the train stage's outs; return train.json. Only the
    default family's generator is registered. `fault` is the fault-tolerance tests'
    `pipeline.train.faults.KillAt`."""
    rc = params.ray
    if rc.use_gpu and not (rc.address or os.environ.get("RAY_ADDRESS")) \
            and not torch.cuda.is_available():
        raise UserError("ray.use_gpu: true but torch sees no CUDA GPU here; set ray.use_gpu: "
                        "false (CPU profile) or point ray.address at a GPU cluster")
    tc = params.train
    arrays = training_arrays(data, tc.split, tc.num_images, params.seed)
    storage = storage_root(rc.storage_path, root)
    uri = tracking_uri(params.mlflow)
    start = time.monotonic()
    with ray_session(params) as address:
        import ray

        workers = resolve_workers(params, ray.cluster_resources())
        if params.train.batch_size > len(arrays.images):
            raise UserError(f"train.batch_size: {params.train.batch_size} is more than the "
                            f"{len(arrays.images)} training images")
        check_cluster(params, storage, uri, workers)
        name = run_name(params, arrays.sha256, workers)
        source = str(data) if tc.split == "train" else split_path(data, tc.split)
        tracker = _open_tracker(params, name, storage, arrays, source, address, workers, family)
        print(f"training run {name} ({workers} workers); MLflow: "
              f"{run_url(tracker.uri, tracker.experiment_id, tracker.run_id)}", flush=True)
        error_file = f"{storage}/{name}.error.txt"
        remove(error_file)  # a previous attempt's
        # Closed FINISHED, or FAILED/KILLED on an error (Ctrl-C, SIGTERM): never left RUNNING.
        with tracker.closing():
            result = _fit(params, name, storage, arrays, tracker, workers, fault,
                          "ERROR" if address == "local" else "WARNING")
            if result.error is not None:
                raise result.error
            _raise_worker_error(error_file)
            if result.checkpoint is None:
                raise UserError(f"{storage}/{name}: training produced no checkpoint")
            with result.checkpoint.as_directory() as ckpt_dir:
                history = export(Path(ckpt_dir), models_dir, metrics_dir)
            last = history[-1]
            summary = {**{k: last[k] for k in LOG_FIELDS}, "world_size": workers,
                       "run_name": name, "family": family,
                       # Training time over every epoch, across resumes and restarts; the
                       # stage's own wall time (with Ray start-up) is this invocation's only.
                       "total_seconds": round(sum(r["epoch_seconds"] for r in history), 2),
                       "stage_seconds": round(time.monotonic() - start, 2),
                       "mean_images_per_s": sum(r["images_per_s"] for r in history)
                       / len(history),
                       # A DP run's privacy spent and what it was computed from (loop.py).
                       **{k: v for k, v in last.items() if k.startswith("dp_")}}
            write_json(metrics_dir / "train.json", summary)
            version = (register_generator(tracker, models_dir / "generator.pt", params)
                       if family == DEFAULT_FAMILY else None)
            tracker.write_run_file(models_dir / "run.json", run_name=name, world_size=workers,
                                   registered_model=params.mlflow.registered_model,
                                   model_version=version)
            tracker.log_artifact(metrics_dir / "train_loss.png", "plots")
            tracker.log_summary(train_summary(tracker.run_id, summary, metrics_dir / "samples"))
    print(f"trained {last['epoch']} epochs in {summary['total_seconds']:.0f} s "
          f"(this run: {summary['stage_seconds']:.0f} s with Ray start-up): loss_d="
          f"{last['loss_d']:.3f} loss_g={last['loss_g']:.3f} "
          f"{summary['mean_images_per_s']:.0f} img/s"
          + (f" dp_epsilon={summary['dp_epsilon']:.3f}" if "dp_epsilon" in summary else ""),
          flush=True)
    return summary
