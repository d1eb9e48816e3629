"""Ray Train launcher: end-to-end training on digits with 2 workers, MLflow, determinism.

Integration tests start Ray: run them inside a network namespace (`make test` does), e.g.
    unshare -n sh -c 'ip link set lo up; .venv/bin/pytest tests/test_launcher.py'
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from pipeline.config import parse_params
from pipeline.errors import UserError
from pipeline.models import load_discriminator, load_generator
from pipeline.train import launcher

from conftest import digits_npz, local_ray


def read_log(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines()))


def tiny_params(tmp: Path, **train: object):
    return parse_params({
        "data": {"dataset": "digits"},
        "model": {"latent_dim": 16, "g_features": 8, "d_features": 8},
        "train": {"epochs": 2, "batch_size": 32, "max_steps_per_epoch": 4, "grid_size": 16,
                  **train},
        "ray": {"num_workers": 2, "storage_path": str(tmp / "ray_results")},
        "mlflow": {"tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}"},
    })


@pytest.fixture(scope="module")
def ray_cluster():
    """One embedded local Ray for this module (start-up ~5 s); see `conftest.local_ray`."""
    with local_ray():
        yield


def test_gpu_without_cuda_is_a_user_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    params = parse_params({"ray": {"use_gpu": True}})
    with pytest.raises(UserError, match="no CUDA GPU"):
        launcher.train(params, tmp_path / "train.npz", tmp_path / "models", tmp_path / "m")


def test_multi_node_with_local_storage_is_refused(monkeypatch) -> None:
    import ray

    monkeypatch.delenv("GAN_FORENSICS_SHARED_STORAGE", raising=False)
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}, {"Alive": True}])
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    with pytest.raises(UserError, match="GAN_FORENSICS_SHARED_STORAGE=1"):
        launcher._check_cluster(parse_params({}), "/local/ray_results")
    launcher._check_cluster(parse_params({}), "s3://bucket/ray")  # a URI is shared storage


def test_run_name_depends_on_training_inputs_only() -> None:
    base = parse_params({})
    assert launcher.run_name(base, "a") == launcher.run_name(
        parse_params({"generate": {"num_eval": 5}}), "a")
    assert launcher.run_name(base, "a") != launcher.run_name(base, "b")
    assert launcher.run_name(base, "a") != launcher.run_name(
        parse_params({"train": {"epochs": 9}}), "a")


@pytest.mark.integration
def test_end_to_end_two_workers_and_determinism(tmp_path: Path, monkeypatch, ray_cluster):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    data = digits_npz(tmp_path / "train.npz")
    params = tiny_params(tmp_path)
    summary = launcher.train(params, data, tmp_path / "models", tmp_path / "metrics")

    assert summary["world_size"] == 2 and summary["epoch"] == 2
    G, meta = load_generator(tmp_path / "models" / "generator.pt")
    assert G(torch.randn(3, 16)).shape == (3, 1, 28, 28) and meta["epoch"] == 2
    load_discriminator(tmp_path / "models" / "discriminator.pt")
    rows = read_log(tmp_path / "metrics" / "train_log.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert sorted(p.name for p in (tmp_path / "metrics" / "samples").iterdir()) == [
        "epoch_001.png", "epoch_002.png"]
    train_json = json.loads((tmp_path / "metrics" / "train.json").read_text())
    assert train_json["run_name"] == summary["run_name"] and train_json["images_per_s"] > 0

    run_info = json.loads((tmp_path / "models" / "run.json").read_text())
    assert run_info["world_size"] == 2 and run_info["run_name"] == summary["run_name"]
    client = MlflowClient(run_info["tracking_uri"])
    run = client.get_run(run_info["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["world_size"] == "2" and run.data.tags["device"] == "cpu"
    assert run.data.params["train.batch_size"] == "32"
    history = client.get_metric_history(run.info.run_id, "train/loss_d")
    assert sorted(m.step for m in history) == [1, 2]
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
    assert "samples/epoch_002.png" in artifacts

    # Same seed and world size, a fresh Ray run (other storage): identical first epoch.
    other = tiny_params(tmp_path / "other", epochs=1)
    launcher.train(other, data, tmp_path / "other" / "models", tmp_path / "other" / "metrics")
    again = read_log(tmp_path / "other" / "metrics" / "train_log.csv")
    assert (again[0]["loss_d"], again[0]["loss_g"]) == (rows[0]["loss_d"], rows[0]["loss_g"])


@pytest.mark.integration
def test_diverging_run_is_one_user_error(tmp_path: Path, monkeypatch, ray_cluster) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    params = tiny_params(tmp_path, lr_d=1e30, lr_g=1e30)  # NaN within the first steps
    with pytest.raises(UserError, match=r"non-finite loss at epoch 1 step \d+") as err:
        launcher.train(params, digits_npz(tmp_path / "train.npz"), tmp_path / "models",
                       tmp_path / "metrics")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "models" / "generator.pt").exists()
    client = MlflowClient(params.mlflow.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("gan-forensics").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
