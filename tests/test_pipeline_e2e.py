"""The whole pipeline, end to end, on tiny real data (sklearn digits) against a REAL MLflow server.

`dvc repro` runs every stage in a copy of the repo with 2 Ray workers; then the run is read back
over HTTP with `MlflowClient`, the registered generator is loaded and sampled, and headless
Chromium renders the run page. A second test kills the server while `train` runs: the model and
metrics files must still land and the error must say what was not logged.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import BIN, REPO, copy_repo, repo_env
from servers import chromium, mlflow_server, render, stop

pytestmark = pytest.mark.integration

ARTIFACTS = REPO / "tests" / "artifacts"  # screenshots the tests keep (gitignored)

TINY = {
    "data": {"dataset": "digits"},
    "model": {"latent_dim": 16, "g_features": 16, "d_features": 16},
    "train": {"epochs": 2, "batch_size": 32, "max_steps_per_epoch": 6, "grid_size": 16},
    "ray": {"num_workers": 2, "cpus_per_worker": 1},
    "generate": {"num_eval": 300, "num_detector_train": 200, "num_detector_test": 100,
                 "batch_size": 100},
    "evaluate": {"num_samples": 300, "kid_subsets": 10, "kid_subset_size": 100,
                 "batch_size": 100, "featurenet": {"epochs": 1, "width": 8},
                 "inception": {"enabled": "off"}},
    "detect": {"epochs": 1, "width": 8, "batch_size": 64},
    "mlflow": {"experiment": "e2e", "registered_model": "e2e-generator"},
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def tiny_repo(tmp_path: Path, **over: dict) -> Path:
    repo = copy_repo(tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params = _merge(_merge(params, TINY), over)
    params["ray"]["storage_path"] = str(tmp_path / "ray_results")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return repo


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """`dvc repro` of the tiny pipeline against a live server; yields what the tests inspect."""
    tmp = tmp_path_factory.mktemp("e2e")
    repo = tiny_repo(tmp)
    with mlflow_server(tmp / "mlflow") as (uri, _):
        env = repo_env(repo, MLFLOW_TRACKING_URI=uri)
        started = time.monotonic()
        done = subprocess.run([str(BIN / "dvc"), "repro"], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        yield {"repo": repo, "uri": uri, "env": env, "seconds": time.monotonic() - started,
               "stdout": done.stdout}


def test_repro_writes_every_declared_output(pipeline_run):
    repo = pipeline_run["repo"]
    for rel in ["models/generator.pt", "models/discriminator.pt", "models/featurenet.pt",
                "models/detector.pt", "models/run.json", "metrics/train_log.csv",
                "metrics/train.json", "metrics/quality.json", "metrics/detector.json",
                "metrics/roc.csv", "data/generated/eval.npz", "dvc.lock"]:
        assert (repo / rel).is_file(), rel
    log = (repo / "metrics" / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,") and len(log) == 1 + 2  # header + one row per epoch
    quality = json.loads((repo / "metrics" / "quality.json").read_text())
    # The floor is two real sets: close, and far below a barely trained G (a broken feature net
    # or mixed-up real sets fail here); the sample size is what was asked for.
    assert quality["n_domain"] == 300 and quality["kid_domain_300_subset_size"] == 100
    assert 0 <= quality["fid_domain_floor_300"] < 0.2 * quality["fid_domain_300"]
    assert quality["precision_domain_floor_300"] > 0.8 < quality["recall_domain_floor_300"]
    detector = json.loads((repo / "metrics" / "detector.json").read_text())
    # A 2-epoch G is easy to catch: a broken or untrained detector (AUC ~0.5) fails.
    assert detector["detector_auc"] > 0.9 and detector["detector_ap"] > 0.9
    roc = (repo / "metrics" / "roc.csv").read_text().splitlines()
    first, last = (tuple(float(v) for v in row.split(",")[:2]) for row in (roc[1], roc[-1]))
    assert roc[0].startswith("fpr,tpr") and first == (0.0, 0.0) and last == (1.0, 1.0), roc[:3]
    shown = subprocess.run([str(BIN / "dvc"), "metrics", "show", "--json"], cwd=repo,
                           env=pipeline_run["env"], capture_output=True, text=True, check=True)
    assert "quality.json" in shown.stdout and "detector.json" in shown.stdout
    again = subprocess.run([str(BIN / "dvc"), "status"], cwd=repo, env=pipeline_run["env"],
                           capture_output=True, text=True, check=True)
    assert "up to date" in again.stdout


def test_one_mlflow_run_tells_the_whole_story(pipeline_run):
    from mlflow.tracking import MlflowClient

    repo, uri = pipeline_run["repo"], pipeline_run["uri"]
    info = json.loads((repo / "models" / "run.json").read_text())
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("e2e")
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [info["run_id"]]  # one run per model
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "2"
    assert run.data.params["data.dataset"] == "digits"
    history = client.get_metric_history(run.info.run_id, "train/loss_d")
    assert sorted(m.step for m in history) == [1, 2]
    # What MLflow shows is what the metrics files say.
    quality = json.loads((repo / "metrics" / "quality.json").read_text())
    detector = json.loads((repo / "metrics" / "detector.json").read_text())
    assert run.data.metrics["quality/fid_domain_300"] == pytest.approx(quality["fid_domain_300"])
    assert run.data.metrics["detect/detector_auc"] == pytest.approx(detector["detector_auc"])
    tags = run.data.tags
    assert tags["world_size"] == "2"
    assert tags["device"] == "cpu"
    assert len(tags["git.commit"]) in (40, len("unknown"))
    assert tags["torch.version"].startswith("2.13")
    assert run.inputs.dataset_inputs, "no dataset logged with log_input"
    dataset = run.inputs.dataset_inputs[0].dataset
    assert dataset.digest and dataset.name
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    nested = {a.path for d in names for a in client.list_artifacts(run.info.run_id, d)}
    everything = names | nested
    assert any(p.endswith(".png") and "sample" in p for p in everything), everything
    assert any(p.endswith("quality.json") for p in everything), everything
    assert any(p.endswith("detector.json") for p in everything), everything
    assert any(p.endswith("roc.png") for p in everything), everything


def test_registered_generator_loads_and_generates(pipeline_run):
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.tracking import MlflowClient

    uri = pipeline_run["uri"]
    client = MlflowClient(uri)
    versions = client.search_model_versions("name='e2e-generator'")
    assert len(versions) == 1
    version = versions[0]
    info = json.loads((pipeline_run["repo"] / "models" / "run.json").read_text())
    assert version.run_id == info["run_id"]
    assert any(k.startswith("fid_domain") for k in version.tags), version.tags
    mlflow.set_tracking_uri(uri)
    model = mlflow.pytorch.load_model(f"models:/e2e-generator/{version.version}")
    with torch.no_grad():
        images = model(torch.randn(4, 16))
    assert tuple(images.shape) == (4, 1, 28, 28)
    assert float(images.min()) >= -1.0 and float(images.max()) <= 1.0


def test_mlflow_ui_shows_the_run(pipeline_run, tmp_path):
    if not chromium():
        pytest.skip("chromium is not installed (make test installs it where apt is available)")
    info = json.loads((pipeline_run["repo"] / "models" / "run.json").read_text())
    uri = pipeline_run["uri"]
    url = (f"{uri}/#/experiments/{info['experiment_id']}/runs/{info['run_id']}"
           "?workflowType=machine_learning")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "mlflow-run.png"
    dom = render(url, tmp_path / "profile", shot, budget_ms=25000)
    from mlflow.tracking import MlflowClient

    run = MlflowClient(uri).get_run(info["run_id"])
    assert run.info.run_name in dom
    assert "train.epochs" in dom or "Parameters" in dom
    assert shot.is_file() and shot.stat().st_size > 10_000


def test_server_killed_mid_train_still_lands_files(tmp_path):
    repo = tiny_repo(tmp_path, train={"epochs": 6, "max_steps_per_epoch": 8})
    subprocess.run([str(BIN / "dvc"), "repro", "prepare"], cwd=repo, env=repo_env(repo),
                   check=True, capture_output=True, timeout=300)
    with mlflow_server(tmp_path / "mlflow") as (uri, server):
        env = repo_env(repo, MLFLOW_TRACKING_URI=uri)
        train = subprocess.Popen(
            [str(BIN / "python"), "stages/train.py", "--data", "data/prepared/train.npz",
             "--models", "models", "--metrics", "metrics"],
            cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        try:
            log = repo / "metrics" / "train_log.csv"
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and train.poll() is None:
                if log.is_file() and len(log.read_text().splitlines()) >= 2:
                    break
                time.sleep(0.5)
            assert train.poll() is None, "train finished before the server could be killed"
            stop(server)  # the tracking server goes away mid-run
            _, err = train.communicate(timeout=600)
        finally:
            stop(train)
    assert train.returncode != 0
    assert (repo / "models" / "generator.pt").is_file()
    assert (repo / "metrics" / "train.json").is_file()
    rows = (repo / "metrics" / "train_log.csv").read_text().splitlines()
    assert len(rows) == 1 + 6
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: MLflow") and "did not record" in last, err[-2000:]
    assert "Traceback" not in err
    shutil.rmtree(repo / "data", ignore_errors=True)
    assert np.isfinite(json.loads((repo / "metrics" / "train.json").read_text())["loss_g"])


def _cli(repo: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "gan-forensics"), *args], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_fid_and_detect_on_the_pipeline_outputs(pipeline_run, tmp_path):
    from PIL import Image

    repo, env = pipeline_run["repo"], pipeline_run["env"]
    assert "fid" in _cli(repo, env, "--help").stdout
    done = _cli(repo, env, "fid", "data/generated/eval.npz", "data/prepared/test.npz",
                "--n", "150", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["name"] == "fid_domain_150" and result["n"] == 150
    assert result["fid"] > 0 and np.isfinite(result["kid_mean"])
    real = json.loads(_cli(repo, env, "fid", "data/prepared/train.npz", "data/prepared/test.npz",
                           "--n", "150", "--json").stdout)
    assert real["fid"] < result["fid"]  # real vs real is closer than fakes vs real
    assert result["kid_std"] is None  # N=150 <= the KID subset size: one subset, no spread
    # A folder of PNGs, as users bring them: fakes from the generator, reals from the test set.
    folder = tmp_path / "suspects"
    folder.mkdir()
    fakes = np.load(repo / "data/generated/detector_test.npz")["images"][:3]
    reals = np.load(repo / "data/prepared/test.npz")["images"][:3]
    for i, image in enumerate([*fakes, *reals]):
        Image.fromarray(image[..., 0]).save(folder / f"{'fake' if i < 3 else 'real'}{i}.png")
    done = _cli(repo, env, "detect", str(folder), "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert sorted(r["image"] for r in rows) == sorted(p.name for p in folder.iterdir())
    assert all(0.0 <= r["p_fake"] <= 1.0 for r in rows)
    # Bad input: one line, no traceback, never a silently smaller N.
    for args, expected in [(("fid", "missing.npz", "data/prepared/test.npz"), "missing.npz"),
                           (("fid", "data/generated/eval.npz", "data/prepared/test.npz",
                             "--n", "100000"), "fewer than n=100000")]:
        done = _cli(repo, env, *args)
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert expected in done.stderr.strip().splitlines()[-1], done.stderr


def test_dvc_exp_run_with_overrides_tags_its_mlflow_run(pipeline_run):
    from mlflow.tracking import MlflowClient

    repo, env = pipeline_run["repo"], pipeline_run["env"]
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True, capture_output=True)
    subprocess.run([*git, "commit", "-qm", "baseline"], cwd=repo, check=True,
                   capture_output=True)
    done = subprocess.run([str(BIN / "dvc"), "exp", "run", "-n", "tiny-exp",
                           "-S", "train.epochs=1", "-S", "model.g_features=8"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    shown = subprocess.run([str(BIN / "dvc"), "exp", "show", "--json"], cwd=repo, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert "tiny-exp" in shown and "fid_domain_300" in shown and "detector_auc" in shown
    runs = MlflowClient(pipeline_run["uri"]).search_runs(
        [MlflowClient(pipeline_run["uri"]).get_experiment_by_name("e2e").experiment_id],
        filter_string="tags.`dvc.exp_name` = 'tiny-exp'")
    assert len(runs) == 1 and runs[0].data.params["model.g_features"] == "8"
    # DVC refuses `-S train.epoch=1` itself; `+train.epoch=1` adds the key, and our config
    # is what rejects it, before any stage runs its work.
    bad = subprocess.run([str(BIN / "dvc"), "exp", "run", "-S", "+train.epoch=1"], cwd=repo,
                         env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "train.epoch: unknown key" in bad.stdout + bad.stderr
