"""A training run's identity: the Ray run name, `gan-<12 hex>`.

Ray Train V2 resumes a run by its `RunConfig(name, storage_path)`, and the model's MLflow run is
found by the tag `ray.run_name`, so the name decides what a rerun continues. It covers exactly
what changes the trajectory so far: the model, the optimiser and batch settings, precision and
memory format, the seed, the data (sha256 of train.npz), the world size and the training code.
It leaves out what only says how far to go or what to draw: `train.epochs` (raising it
continues the same run from its last checkpoint, in the same MLflow run) and `train.grid_size`.
`max_steps_per_epoch` stays in: it changes what every past epoch was. So does `train.epochs`
of a DP run (`train.dp.enabled`): its noise is calibrated to the planned epochs, so more epochs
is another run from the first step; likewise with a learning-rate decay (`train.lr_decay_start`),
whose rates follow the planned steps.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pipeline.config import Params, params_hash

# train.* keys that do not change the trajectory of the epochs already trained (epochs does
# under DP-SGD or a learning-rate decay: `run_name` keeps it then).
NOT_IDENTITY = frozenset({"epochs", "grid_size"})


def code_hash() -> str:
    """sha256 of the training code (pipeline/models, pipeline/train, the DP-SGD module and the
    image conversion they share): a code change starts a fresh run instead of resuming what the
    old code wrote."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parents[1]
    files = [*(package / "models").glob("*.py"), *(package / "train").glob("*.py"),
             package / "privacy" / "dp.py", package / "imaging.py"]
    for path in sorted(files):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def run_name(params: Params, data_sha256: str, world_size: int) -> str:
    """`gan-<12 hex>`: equal for equal trajectories so far, so a rerun resumes the same run."""
    planned = params.train.dp.enabled or params.train.lr_decay_start is not None
    exclude = set(NOT_IDENTITY) - ({"epochs"} if planned else set())
    train = params.train.model_dump(mode="json", exclude=exclude)
    return "gan-" + params_hash(params.model, extra={
        "train": train, "seed": params.seed, "world_size": world_size,
        "use_gpu": params.ray.use_gpu, "data_sha256": data_sha256, "code": code_hash()})
