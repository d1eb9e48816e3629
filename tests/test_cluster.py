"""A real 2-node Ray cluster on 127.0.0.1 (token auth): `gan-forensics submit` trains on it.

Runs inside the test suite's private network namespace (`make test` wraps pytest in
`unshare -n`). The head and one more node have one CPU each, so the two DDP workers (one CPU
each) must run one per node. The job's outputs come back into the repo copy.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import BIN, repo_env
from servers import kill_marked, ray_cluster
from test_pipeline_e2e import tiny_repo

pytestmark = pytest.mark.integration


def test_submit_trains_on_a_two_node_cluster(tmp_path):
    from mlflow.tracking import MlflowClient

    from pipeline.models import load_generator

    repo = tiny_repo(tmp_path, train={"epochs": 2, "max_steps_per_epoch": 4})
    subprocess.run([str(BIN / "dvc"), "repro", "prepare"], cwd=repo, env=repo_env(repo),
                   check=True, capture_output=True, timeout=300)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with ray_cluster(tmp_path / "cluster", nodes=2, cpus_per_node=1) as cluster:
        env = {**cluster, **repo_env(repo), "HOME": cluster["HOME"],
               "GAN_FORENSICS_SHARED_STORAGE": "1", "MLFLOW_TRACKING_URI": tracking}
        probe = (f"import ray; ray.init(address='{cluster['ADDRESS']}', logging_level='ERROR');"
                 "print(sorted(n['Resources'].get('CPU', 0) for n in ray.nodes() if n['Alive']))")
        nodes = subprocess.run([str(BIN / "python"), "-c", probe], env=env,
                               capture_output=True, text=True, timeout=120)
        assert nodes.stdout.strip().splitlines()[-1] == "[1.0, 1.0]", nodes.stderr[-2000:]
        done = subprocess.run([str(BIN / "gan-forensics"), "submit", "--address",
                               cluster["DASHBOARD"], "--timeout", "400"],
                              cwd=repo, env=env, capture_output=True, text=True, timeout=500)
        marker = f"GANF_TEST_CLUSTER={cluster['GANF_TEST_CLUSTER']}"
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    assert "SUCCEEDED" in done.stdout or "pulled" in done.stdout
    assert kill_marked(marker) == 0  # every cluster process was already stopped
    storage = tmp_path / "ray_results"
    checkpoints = list(storage.glob("gan-*/checkpoint_*"))
    assert checkpoints, sorted(p.name for p in storage.rglob("*"))[:20]
    generator, meta = load_generator(repo / "models" / "generator.pt")
    assert meta["epoch"] == 2
    train = json.loads((repo / "metrics" / "train.json").read_text())
    assert train["world_size"] == 2 and train["epoch"] == 2
    run_id = json.loads((repo / "models" / "run.json").read_text())["run_id"]
    client = MlflowClient(tracking)
    run = client.get_run(run_id)
    assert run.data.tags["world_size"] == "2"
    assert run.data.tags["ray.address"] != "local"
    history = client.get_metric_history(run_id, "train/loss_d")
    assert sorted(m.step for m in history) == [1, 2]
