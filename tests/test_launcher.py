"""Ray Train launcher: end-to-end training on digits with 2 workers, MLflow, determinism.

Integration tests start Ray: run them inside a network namespace (`make test` does), e.g.
    unshare -n sh -c 'ip link set lo up; .venv/bin/pytest tests/test_launcher.py'
"""

from __future__ import annotations

import csv
import json
import os
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


def _fake_cluster(monkeypatch, nodes: int, **resources: float) -> None:
    import ray

    monkeypatch.delenv("GAN_FORENSICS_SHARED_STORAGE", raising=False)
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}] * nodes)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0, **resources})


def test_multi_node_with_local_storage_is_refused(monkeypatch) -> None:
    _fake_cluster(monkeypatch, nodes=2)
    server = "http://127.0.0.1:5000"
    with pytest.raises(UserError, match="GAN_FORENSICS_SHARED_STORAGE=1"):
        launcher.check_cluster(parse_params({}), "/local/ray_results", server, 2)
    launcher.check_cluster(parse_params({}), "s3://bucket/ray", server, 2)  # shared storage


@pytest.mark.parametrize("uri", ["sqlite:////repo/mlflow.db", "file:///repo/mlruns",
                                 "/repo/mlruns"])
def test_multi_node_with_a_file_tracking_store_is_refused(monkeypatch, uri: str) -> None:
    """Rank 0 logs the epochs and may land on any node: a sqlite/file store there would be a
    different, empty database and the run's metrics would be lost."""
    _fake_cluster(monkeypatch, nodes=2)
    with pytest.raises(UserError, match=r"^mlflow.tracking_uri: .* 2 nodes .*MLflow server"):
        launcher.check_cluster(parse_params({}), "s3://bucket/ray", uri, 2)
    _fake_cluster(monkeypatch, nodes=1)  # one node: the file is where rank 0 runs
    launcher.check_cluster(parse_params({}), "/local/ray_results", uri, 2)


@pytest.mark.parametrize(("ray_params", "resources", "expected"), [
    ({"num_workers": "auto", "use_gpu": True}, {"GPU": 1.0}, 1),
    ({"num_workers": "auto", "use_gpu": True}, {"GPU": 8.0}, 8),
    ({"num_workers": "auto", "cpus_per_worker": 1}, {"CPU": 4.0}, 4),
    ({"num_workers": "auto", "cpus_per_worker": 3}, {"CPU": 4.0}, 1),
    ({"num_workers": 2}, {"GPU": 8.0}, 2),
])
def test_auto_workers_follow_the_cluster(ray_params, resources, expected) -> None:
    params = parse_params({"ray": ray_params, "train": {"batch_size": 64}})
    assert launcher.resolve_workers(params, {"CPU": 2.0, **resources}) == expected


def test_auto_workers_errors_are_one_line() -> None:
    gpu = parse_params({"ray": {"num_workers": "auto", "use_gpu": True},
                        "train": {"batch_size": 512}})
    with pytest.raises(UserError, match="found no GPU"):
        launcher.resolve_workers(gpu, {"CPU": 8.0})
    with pytest.raises(UserError, match=r"train.batch_size: 512 does not split evenly across 3 "
                                        r"workers .* e.g. 510"):
        launcher.resolve_workers(gpu, {"CPU": 8.0, "GPU": 3.0})


def test_gpu_profile_is_valid_and_follows_the_gpus() -> None:
    from pipeline.config import load_params

    gpu = load_params(Path(__file__).resolve().parents[1] / "params-gpu.yaml")
    assert gpu.ray.num_workers == "auto" and gpu.ray.use_gpu
    assert gpu.evaluate.device == "auto" and gpu.detect.device == "auto"  # CPU-only head: ok
    for n in (1, 2, 4):
        assert launcher.resolve_workers(gpu, {"CPU": 32.0, "GPU": float(n)}) == n


def test_run_name_depends_on_the_trajectory_only() -> None:
    base = parse_params({})
    name = launcher.run_name(base, "a", 2)
    # Stages after train, how far to train, and the sample grid do not change the name:
    for same in ({"generate": {"num_eval": 5}}, {"train": {"epochs": 9}},
                 {"train": {"grid_size": 16}}, {"ray": {"max_failures": 0}}):
        assert launcher.run_name(parse_params(same), "a", 2) == name, same
    # What changes the trajectory so far does:
    assert launcher.run_name(base, "b", 2) != name  # data
    assert launcher.run_name(base, "a", 1) != name  # world size
    for other in ({"train": {"lr_d": 1e-3}}, {"train": {"batch_size": 64}}, {"seed": 1},
                  {"model": {"g_features": 32}}, {"train": {"max_steps_per_epoch": 10}},
                  {"train": {"precision": "bf16"}}):
        assert launcher.run_name(parse_params(other), "a", 2) != name, other
    # With a learning-rate decay, the planned epochs set every step's rate: they count too.
    decay = parse_params({"train": {"lr_decay_start": 0.5}})
    longer = parse_params({"train": {"lr_decay_start": 0.5, "epochs": 9}})
    assert launcher.run_name(longer, "a", 2) != launcher.run_name(decay, "a", 2)


def test_the_embedded_ray_s_environment_fills_only_what_the_user_left_unset(monkeypatch) -> None:
    """`LOCAL_ENV` for an embedded Ray: the user's own values win, and on exit (error or not)
    os.environ is as it was."""
    user, unset = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "RAY_worker_niceness"
    assert {user, unset} <= launcher.LOCAL_ENV.keys()
    monkeypatch.setenv(user, "3")
    monkeypatch.delenv(unset, raising=False)
    before = dict(os.environ)
    with pytest.raises(RuntimeError, match="inside"), launcher._environ(launcher.LOCAL_ENV):
        assert os.environ[user] == "3"
        assert os.environ[unset] == launcher.LOCAL_ENV[unset]
        raise RuntimeError("inside")
    assert dict(os.environ) == before


def test_the_embedded_gcs_never_takes_a_port_ray_gives_another_component(monkeypatch) -> None:
    """The OS may hand out 52365, the dashboard agent's default: the GCS takes the next one."""
    from ray._private import ray_constants

    offered = iter([ray_constants.DEFAULT_DASHBOARD_AGENT_LISTEN_PORT, 41234])

    class OneSocket:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def bind(self, address):
            assert address == ("127.0.0.1", 0)  # loopback only

        def getsockname(self):
            return ("127.0.0.1", next(offered))

    monkeypatch.setattr(launcher.socket, "socket", OneSocket)
    assert launcher._free_loopback_port() == 41234
    offered = iter([ray_constants.DEFAULT_DASHBOARD_AGENT_LISTEN_PORT] * 3)
    with pytest.raises(RuntimeError, match="in 3 tries"):
        launcher._free_loopback_port(tries=3)


def test_bf16_falls_back_to_fp32_without_native_bf16(monkeypatch) -> None:
    from pipeline.train.loop import effective_precision

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True:
                        including_emulation)  # a pre-sm80 GPU: bf16 only by emulation
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    with pytest.warns(UserWarning, match="bf16 is emulated on Tesla T4"):
        assert effective_precision("bf16", torch.device("cuda", 0)) == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert effective_precision("bf16", torch.device("cuda", 0)) == "bf16"
    assert effective_precision("bf16", torch.device("cpu")) == "bf16"
    assert effective_precision("fp32", torch.device("cuda", 0)) == "fp32"


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
    history = client.get_metric_history(run.info.run_id, "curves/loss_d")
    assert sorted(m.step for m in history) == [1, 2]
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
    assert "samples/epoch_002.png" in artifacts

    # Same seed and world size, a fresh Ray run (other storage): identical first epoch.
    other = tiny_params(tmp_path / "other", epochs=1)
    launcher.train(other, data, tmp_path / "other" / "models", tmp_path / "other" / "metrics")
    again = read_log(tmp_path / "other" / "metrics" / "train_log.csv")
    assert (again[0]["loss_d"], again[0]["loss_g"]) == (rows[0]["loss_d"], rows[0]["loss_g"])


@pytest.mark.integration
def test_raising_epochs_extends_the_same_run(tmp_path: Path, monkeypatch, ray_cluster) -> None:
    """Train 2 epochs, look, then ask for 3: one more epoch runs, in the same MLflow run."""
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    data = digits_npz(tmp_path / "train.npz")
    first = launcher.train(tiny_params(tmp_path), data, tmp_path / "models", tmp_path / "m")
    run_id = json.loads((tmp_path / "models" / "run.json").read_text())["run_id"]
    before = read_log(tmp_path / "m" / "train_log.csv")
    # A cosmetic change rides along: it must not start the run over either.
    again = launcher.train(tiny_params(tmp_path, epochs=3, grid_size=9), data,
                           tmp_path / "models", tmp_path / "m")

    assert again["run_name"] == first["run_name"] and again["epoch"] == 3
    assert json.loads((tmp_path / "models" / "run.json").read_text())["run_id"] == run_id
    rows = read_log(tmp_path / "m" / "train_log.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert rows[:2] == before  # epochs 1-2 kept as they were, not retrained
    # total_seconds is the training time of all 3 epochs, not this resume's one epoch.
    assert again["total_seconds"] == pytest.approx(
        sum(float(r["epoch_seconds"]) for r in rows), abs=0.02)
    assert again["total_seconds"] > first["total_seconds"] > 0
    assert again["stage_seconds"] > 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert len(client.search_runs([client.get_experiment_by_name("gan-forensics")
                                   .experiment_id])) == 1
    steps = sorted(m.step for m in client.get_metric_history(run_id, "curves/loss_d"))
    assert steps == [1, 2, 3]  # continuous history: exactly one more epoch was logged
    assert client.get_run(run_id).info.status == "FINISHED"
    G, meta = load_generator(tmp_path / "models" / "generator.pt")
    assert meta["epoch"] == 3 and meta["step"] == 3 * 4


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
