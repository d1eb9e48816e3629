"""Running the train stage on a Ray cluster: shared storage, job submission, outputs back.

`gan-forensics submit` (what `make submit` runs) does, from the user's machine:
  1. copy `data/prepared/{train,val}.npz` to `<ray.storage_path>/inputs/` (DVC-tracked data is
     gitignored, so `ray job submit` would never upload it),
  2. submit `python stages/train.py --family F ...` as a Ray job with this repo as its working
     dir,
  3. follow its logs until it ends, and
  4. copy the job's exported outputs (`<storage>/exports/<job>/{models,metrics}/F`) back into
     `models/F/` and `metrics/F/`, where DVC tracks them (`dvc commit train@F` records them).

Storage is anything pyarrow understands: a local/NFS path or `s3://bucket/prefix`.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path

from pipeline.errors import UserError
from pipeline.io import sha256_file

SHARED_ENV = "GAN_FORENSICS_SHARED_STORAGE"  # "1": this plain path is shared by every node
# Not uploaded with the job's working dir (on top of .gitignore). Anchored ("/data"): a bare
# "data" would also drop the `pipeline/data` package (gitignore patterns match at any depth).
UPLOAD_EXCLUDES = [".venv", "/.git", "/data", "/mlartifacts", "/mlruns", "/ray_results",
                   ".cache"]


def is_uri(path: str) -> bool:
    return "://" in path


def storage_root(storage_path: str, root: Path | None = None) -> str:
    """An absolute storage location: URIs unchanged, relative paths resolved under `root`."""
    if is_uri(storage_path):
        return storage_path.rstrip("/")
    return str(((root or Path.cwd()) / storage_path).resolve())


def check_shared_storage(storage: str, num_nodes: int) -> None:
    """Refuse a node-local checkpoint path on a multi-node cluster (checkpoints would be lost)."""
    if num_nodes > 1 and not is_uri(storage) and os.environ.get(SHARED_ENV) != "1":
        raise UserError(
            f"ray.storage_path: {storage} is a local path but the cluster has {num_nodes} nodes; "
            f"use shared storage (s3://bucket/prefix, or an NFS path mounted on every node and "
            f"{SHARED_ENV}=1)"
        )


def _fs(location: str):  # -> tuple[pyarrow.fs.FileSystem, str]
    import pyarrow.fs as pafs

    if is_uri(location):
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), location


def read_bytes(location: str) -> bytes:
    """Read a whole file from a local path or a storage URI."""
    fs, path = _fs(location)
    try:
        with fs.open_input_stream(path) as fh:
            return fh.read()
    except (OSError, FileNotFoundError) as exc:
        raise UserError(f"{location}: cannot read ({exc})") from None


def exists(location: str) -> bool:
    """Whether a file or directory exists at a local path or storage URI."""
    import pyarrow.fs as pafs

    fs, path = _fs(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def remove(location: str) -> None:
    """Delete one file at a local path or storage URI; a missing file is fine."""
    fs, path = _fs(location)
    with contextlib.suppress(FileNotFoundError, OSError):
        fs.delete_file(path)


def copy_file(src: str, dest: str) -> None:
    """Copy one file between local paths and storage URIs (either side)."""
    import pyarrow.fs as pafs

    src_fs, src_path = _fs(src)
    dest_fs, dest_path = _fs(dest)
    dest_fs.create_dir(os.path.dirname(dest_path), recursive=True)
    pafs.copy_files(src_path, dest_path, source_filesystem=src_fs,
                    destination_filesystem=dest_fs)


def export_outputs(files: list[Path], export: str, root: Path | None = None) -> None:
    """Copy output files to `<export>/<path relative to root>` (run by the job, after fit)."""
    root = (root or Path.cwd()).resolve()
    for path in files:
        copy_file(str(path.resolve()), f"{export}/{path.resolve().relative_to(root)}")


def pull_outputs(export: str, dest_root: Path) -> list[Path]:
    """Copy `<export>/{models,metrics}/**` into `dest_root/{models,metrics}`; return local paths."""
    import pyarrow.fs as pafs

    fs, base = _fs(export)
    pulled = []
    for info in fs.get_file_info(pafs.FileSelector(base, recursive=True)):
        if info.type != pafs.FileType.File:
            continue
        rel = Path(info.path).relative_to(Path(base))
        target = dest_root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.pull")
        with fs.open_input_stream(info.path) as src, open(tmp, "wb") as dst:
            dst.write(src.read())
        os.replace(tmp, target)
        pulled.append(target)
    return pulled


def submit_train(address: str, storage_path: str, data: Path, tracking_uri: str,
                 timeout_s: float = 3600.0, root: Path | None = None,
                 family: str = "dcgan") -> list[Path]:
    """Submit zoo family `family`'s train stage as a Ray job, follow it, and pull its outputs
    back."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    root = root or Path.cwd()
    storage = storage_root(storage_path, root)
    if not is_uri(storage) and os.environ.get(SHARED_ENV) != "1":
        raise UserError(
            f"ray.storage_path: {storage} must be storage both this machine and the cluster "
            f"reach: s3://bucket/prefix, or an NFS path mounted on both and {SHARED_ENV}=1"
        )
    if not data.is_file():
        raise UserError(f"{data}: not found; run `dvc repro prepare` first")
    # The training split and, beside it, val.npz (what a `train.split: val` family learns
    # from; pipeline.train.data.split_path), under a directory named by the data's hash.
    remote_dir = f"{storage}/inputs/{sha256_file(data)[:16]}"
    remote_data = f"{remote_dir}/train.npz"
    copy_file(str(data.resolve()), remote_data)
    if (data.parent / "val.npz").is_file():
        copy_file(str((data.parent / "val.npz").resolve()), f"{remote_dir}/val.npz")
    job = f"gan-train-{uuid.uuid4().hex[:8]}"
    export = f"{storage}/exports/{job}"
    entrypoint = (f"python stages/train.py --family {family} --data {remote_data} "
                  f"--models models/{family} --metrics metrics/{family} --export {export}")
    env = {"MLFLOW_TRACKING_URI": tracking_uri, "PYTHONPATH": "."}
    if os.environ.get(SHARED_ENV):
        env[SHARED_ENV] = os.environ[SHARED_ENV]
    try:
        client = JobSubmissionClient(address)
    except Exception as exc:  # noqa: BLE001 - connection errors come in many types
        raise UserError(f"Ray cluster {address} is unreachable ({exc})") from None
    client.submit_job(entrypoint=entrypoint, submission_id=job, runtime_env={
        "working_dir": str(root), "env_vars": env,
        "excludes": UPLOAD_EXCLUDES,
    })
    print(f"submitted {job} to {address}")
    shown, deadline = 0, time.monotonic() + timeout_s
    status = client.get_job_status(job)
    while not status.is_terminal():
        if time.monotonic() > deadline:
            client.stop_job(job)
            raise UserError(f"job {job} did not finish within {timeout_s:.0f} s; stopped it")
        time.sleep(2)
        logs = client.get_job_logs(job)
        print(logs[shown:], end="", flush=True)
        shown = len(logs)
        status = client.get_job_status(job)
    print(client.get_job_logs(job)[shown:], end="", flush=True)
    if status != JobStatus.SUCCEEDED:
        raise UserError(f"job {job} ended {status.value}; its logs are above")
    return pull_outputs(export, root)
