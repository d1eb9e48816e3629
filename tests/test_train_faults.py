"""Fault tolerance of training: a worker SIGKILLed mid-epoch, the stage SIGTERMed and rerun.

Integration tests start Ray: run them inside a network namespace (`make test` does).
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.config import parse_params
from pipeline.train import launcher
from pipeline.train.faults import KillAt

from conftest import digits_npz, local_ray

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


def raw_params(tmp: Path, **train: object) -> dict:
    return {
        "data": {"dataset": "digits"},
        "model": {"latent_dim": 16, "g_features": 8, "d_features": 8},
        "train": {"epochs": 3, "batch_size": 32, "max_steps_per_epoch": 4, "grid_size": 16,
                  **train},
        "ray": {"num_workers": 2, "storage_path": str(tmp / "ray_results")},
        "mlflow": {"tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}"},
    }


def epochs_logged(metrics: Path) -> list[int]:
    with open(metrics / "train_log.csv") as fh:
        return [int(r["epoch"]) for r in csv.DictReader(fh)]


def epochs_printed(out: str | list[str]) -> list[int]:
    """The epoch number of every per-epoch log line, in order (a repeated line repeats)."""
    text = "".join(out) if isinstance(out, list) else out
    return [int(e) for e in re.findall(r"^.*\bepoch (\d+)/\d+ loss_d=", text, flags=re.M)]


def read_lines(proc: subprocess.Popen, until, timeout: float) -> list[str]:
    """The stage's output lines until `until(lines)` holds, it exits, or `timeout` passes."""
    import selectors

    lines: list[str] = []
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until(lines):
        if not sel.select(timeout=0.5):
            continue
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
    sel.close()
    return lines


def wait_registered(storage: Path, at_least: int, timeout: float) -> int:
    """The epoch of the latest checkpoint Ray Train has registered (its checkpoint manager's
    snapshot), once it is >= `at_least` or `timeout` has passed."""
    import json

    deadline, epoch = time.monotonic() + timeout, 0
    while time.monotonic() < deadline and epoch < at_least:
        for snap in storage.glob("*/checkpoint_manager_snapshot.json"):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                latest = json.loads(snap.read_text())["latest_checkpoint_result"]
                epoch = max(epoch, int(latest["metrics"]["epoch"]))
        time.sleep(0.2)
    return epoch


def run_stage(tmp: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "stages" / "train.py"), "--params", "params.yaml",
         "--data", "train.npz", "--models", "models", "--metrics", "metrics"],
        cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def finish(proc: subprocess.Popen, timeout: float) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:  # never leave a Ray of ours running
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return out


def test_stage_sigterm_then_rerun_resumes(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    digits_npz(tmp_path / "train.npz")
    epochs = 12
    params = raw_params(tmp_path, epochs=epochs, batch_size=64, max_steps_per_epoch=50)
    params["model"].update(g_features=16, d_features=16)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    proc = run_stage(tmp_path)
    lines = read_lines(proc, until=lambda seen: len(set(epochs_printed(seen))) >= 3, timeout=120)
    # Ray Train V2 registers a reported checkpoint when its controller next polls the workers
    # (every 2 s, later on a loaded machine): interrupt once one past epoch 1 is registered.
    registered = wait_registered(tmp_path / "ray_results", at_least=2, timeout=60)
    assert proc.poll() is None, finish(proc, 5)
    proc.send_signal(signal.SIGTERM)  # what `dvc` / `ray job stop` / `kill` send
    out = "".join(lines) + finish(proc, 60)
    assert proc.returncode == 130 and "error: interrupted" in out, out
    done_before = max(epochs_printed(out))
    assert 2 <= registered <= done_before < epochs, (registered, out)
    assert not (tmp_path / "models" / "generator.pt").exists()  # no partial outs

    proc = run_stage(tmp_path)
    out = finish(proc, 180)
    assert proc.returncode == 0, out
    resumed = re.search(r"resumed from epoch (\d+)", out)
    # Not from scratch: from the last registered checkpoint (or a later one).
    assert resumed and int(resumed.group(1)) >= registered, out
    # One line per epoch reaches the user: ours, once; no Ray Train report dumps.
    assert epochs_printed(out) == list(range(int(resumed.group(1)) + 1, epochs + 1)), out
    assert "Reporting training result" not in out and "TrainingReport(" not in out, out
    assert epochs_logged(tmp_path / "metrics") == list(range(1, epochs + 1))

    client = MlflowClient(params["mlflow"]["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("gan-forensics").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # one MLflow run per model
    history = client.get_metric_history(runs[0].info.run_id, "curves/loss_d")
    steps = [m.step for m in history]
    assert sorted(set(steps)) == list(range(1, epochs + 1))
    assert len(steps) <= epochs + 2  # only epochs after the registered checkpoint redone


@pytest.fixture(scope="module")
def ray_cluster():
    """One embedded local Ray for this module (start-up ~5 s); see `conftest.local_ray`."""
    with local_ray():
        yield


def test_worker_sigkill_mid_epoch_restarts_from_checkpoint(tmp_path: Path, monkeypatch,
                                                           ray_cluster) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "killed.txt"
    # Rank 1 SIGKILLs itself once, at epoch 2 step 2 (the marker makes the restart survive).
    params = parse_params(raw_params(tmp_path))
    summary = launcher.train(params, digits_npz(tmp_path / "train.npz"), tmp_path / "models",
                             tmp_path / "metrics",
                             fault=KillAt(epoch=2, step=2, rank=1, marker=str(marker)))

    assert marker.read_text().startswith("killed rank 1 at epoch 2 step 2")
    assert summary["epoch"] == 3 and (tmp_path / "models" / "generator.pt").is_file()
    assert epochs_logged(tmp_path / "metrics") == [1, 2, 3]
    run_id = summary_run_id(tmp_path)
    steps = [m.step for m in MlflowClient(params.mlflow.tracking_uri).get_metric_history(
        run_id, "curves/loss_d")]
    assert sorted(steps) == [1, 2, 3]  # epoch 1 was not redone: restarted from its checkpoint


def summary_run_id(tmp: Path) -> str:
    import json

    return json.loads((tmp / "models" / "run.json").read_text())["run_id"]
