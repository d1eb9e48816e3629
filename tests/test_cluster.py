"""A real 2-node Ray cluster on 127.0.0.1 (token auth): `gan-forensics submit` trains on it.

Runs inside the test suite's private network namespace (`make test` wraps pytest in
`unshare -n`). The head and one more node have one CPU each, so the two DDP workers (one CPU
each) must run one per node; the test also reads, from Ray's state API, which node each
Ray Train worker actor of the job ran on. The job's outputs come back into the repo copy, its
checkpoints stay under `ray.storage_path`, and its MLflow run records `world_size=2`.

Every wait is bounded (the whole test takes about a minute on a 2-core machine, at most ~5);
every cluster process is killed on exit and the test checks none is left.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BIN, repo_env
from servers import kill_marked, mlflow_server, ray_cluster
from test_pipeline_e2e import tiny_repo

pytestmark = pytest.mark.integration

EPOCHS = 2
SUBMIT_TIMEOUT = 180  # seconds `gan-forensics submit` waits for the job (it then stops it)

# Asks the cluster (through the dashboard, with the token from $HOME) for its nodes, the jobs
# submitted to it with their logs, and the node of every Ray Train worker actor; prints JSON.
PROBE = r"""
import json, sys
from ray.job_submission import JobSubmissionClient
from ray.util.state import list_actors, list_nodes

dashboard, want_jobs = sys.argv[1], sys.argv[2] == "jobs"
out = {"nodes": [{"id": n.node_id, "state": n.state, "cpu": n.resources_total.get("CPU", 0)}
                 for n in list_nodes(address=dashboard, detail=True)]}
if want_jobs:
    client = JobSubmissionClient(dashboard)
    out["jobs"] = [{"submission_id": j.submission_id, "job_id": j.job_id,
                    "status": str(j.status.value), "message": j.message,
                    "logs": client.get_job_logs(j.submission_id)[-6000:] if j.submission_id
                    else ""} for j in client.list_jobs()]
    out["workers"] = [{"job_id": a.job_id, "node_id": a.node_id, "state": a.state}
                      for a in list_actors(address=dashboard, detail=True, limit=1000,
                                           filters=[("class_name", "=", "RayTrainWorker")])]
print("PROBE " + json.dumps(out))
"""


# The Ray run name the repo copy's own code derives (params, data and training-code hash).
RUN_NAME = """
from pipeline.config import load_params
from pipeline.io import sha256_file
from pipeline.train.launcher import run_name
print(run_name(load_params(), sha256_file("data/prepared/train.npz"), 2))
"""


def _run(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess[str]:
    """subprocess.run that reports a timeout as returncode None (output so far kept)."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired as exc:
        def text(b: bytes | str | None) -> str:
            return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")

        return subprocess.CompletedProcess(cmd, None, text(exc.stdout),  # type: ignore[arg-type]
                                           text(exc.stderr) + f"\n[timed out after {timeout} s]")


def _probe(env: dict[str, str], what: str) -> dict:
    done = _run([str(BIN / "python"), "-c", PROBE, env["DASHBOARD"], what], timeout=90, env=env)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("PROBE ")]
    assert done.returncode == 0 and lines, f"cluster probe failed:\n{done.stderr[-3000:]}"
    return json.loads(lines[-1][len("PROBE "):])


def _marked(marker: str) -> list[str]:
    """Command lines of live processes whose environment holds `marker` (read-only scan)."""
    wanted, found = marker.encode(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if wanted not in fh.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry}: {cmdline[:200]}")
        except OSError:
            continue
    return found


def _storage_path(repo: Path) -> str:
    import yaml

    return yaml.safe_load((repo / "params.yaml").read_text())["ray"]["storage_path"]


def test_submit_trains_on_a_two_node_cluster(tmp_path):
    from mlflow.tracking import MlflowClient

    from pipeline.models import load_discriminator, load_generator

    repo = tiny_repo(tmp_path, train={"epochs": EPOCHS, "max_steps_per_epoch": 4})
    # Training code only this copy has (the run name hashes it): proves the job ran the
    # uploaded working dir's `pipeline`, not the venv's editable install of the main repo.
    with open(repo / "pipeline" / "train" / "__init__.py", "a") as fh:
        fh.write(f"# cluster test copy {tmp_path.name}\n")
    storage = Path(_storage_path(repo))
    assert storage.is_absolute() and storage.parent == tmp_path
    prepared = _run([str(BIN / "dvc"), "repro", "prepare"], timeout=180, cwd=repo,
                    env=repo_env(repo))
    assert prepared.returncode == 0, prepared.stdout[-3000:] + prepared.stderr[-3000:]
    assert (repo / "data" / "prepared" / "train.npz").is_file()

    expected = _run([str(BIN / "python"), "-c", RUN_NAME], timeout=120, cwd=repo,
                    env=repo_env(repo))
    assert expected.returncode == 0, expected.stderr[-3000:]
    expected_name = expected.stdout.split()[-1]

    started = time.monotonic()
    # Rank 0 may run on either node, so a multi-node run needs a tracking server (a sqlite file
    # is refused): a real `mlflow server` on 127.0.0.1, with served artifacts.
    with mlflow_server(tmp_path / "mlflow") as (tracking, _), \
            ray_cluster(tmp_path / "cluster", nodes=2, cpus_per_node=1) as cluster:
        marker = f"GANF_TEST_CLUSTER={cluster['GANF_TEST_CLUSTER']}"
        # The user's shell: the cluster's token (HOME, RAY_AUTH_MODE), the venv's tools, shared
        # storage declared, the MLflow server this test reads back.
        env = {**repo_env(repo), "HOME": cluster["HOME"], "RAY_AUTH_MODE": "token",
               "RAY_USAGE_STATS_ENABLED": "0", "DASHBOARD": cluster["DASHBOARD"],
               "GAN_FORENSICS_SHARED_STORAGE": "1", "MLFLOW_TRACKING_URI": tracking}
        env.pop("RAY_ADDRESS", None)  # the --address flag is what is under test
        before = _probe(env, "nodes")
        alive = [n for n in before["nodes"] if n["state"] == "ALIVE"]
        assert sorted(n["cpu"] for n in alive) == [1.0, 1.0], before
        done = _run([str(BIN / "gan-forensics"), "submit", "--address", cluster["DASHBOARD"],
                     "--timeout", str(SUBMIT_TIMEOUT)], timeout=SUBMIT_TIMEOUT + 60,
                    cwd=repo, env=env)
        try:
            after = _probe(env, "jobs")
        except AssertionError as exc:  # still show what submit printed
            after = {"nodes": [], "jobs": [], "workers": [], "error": str(exc)}
        client = MlflowClient(tracking)
        run_id = json.loads((repo / "models" / "dcgan" / "run.json").read_text())["run_id"] \
            if (repo / "models" / "dcgan" / "run.json").is_file() else None
        run = client.get_run(run_id) if run_id else None
        histories = {key: client.get_metric_history(run_id, key) if run_id else []
                     for key in ("curves/loss_d", "curves/loss_g")}
        artifacts = [a.path for a in client.list_artifacts(run_id, "plots")] if run_id else []
    seconds = time.monotonic() - started

    jobs = after["jobs"]
    job_logs = "\n".join(f"--- job {j['submission_id']} {j['status']} ({j['message']}):\n"
                         f"{j['logs'][-4000:]}" for j in jobs)
    context = (f"\n--- submit exit {done.returncode}, stdout:\n{done.stdout[-3000:]}"
               f"\n--- submit stderr:\n{done.stderr[-3000:]}\n{job_logs}{after.get('error', '')}")
    assert done.returncode == 0, context
    assert len(jobs) == 1 and jobs[0]["submission_id"].startswith("gan-train-"), context
    job = jobs[0]
    assert job["status"] == "SUCCEEDED", context
    assert f"submitted {job['submission_id']}" in done.stdout, context

    # One Ray Train worker actor of this job on each of the two nodes.
    workers = [w for w in after["workers"] if w["job_id"] == job["job_id"]]
    assert len(workers) == 2, (after["workers"], context)
    assert {w["node_id"] for w in workers} == {n["id"] for n in alive}, (workers, alive)

    # Every process the cluster started is gone (read-only scan; a straggler is killed).
    deadline = time.monotonic() + 10
    while (left := _marked(marker)) and time.monotonic() < deadline:
        time.sleep(0.5)
    kill_marked(marker)
    assert not left, f"cluster processes left running: {left}"

    # Outputs pulled back into the repo copy; they load.
    train = json.loads((repo / "metrics" / "dcgan" / "train.json").read_text())
    assert train["world_size"] == 2 and train["epoch"] == EPOCHS, train
    assert train["run_name"] == expected_name, "the job did not run this repo copy's code"
    assert f"pulled {repo / 'models' / 'dcgan' / 'generator.pt'}" in done.stdout, context
    generator, meta = load_generator(repo / "models" / "dcgan" / "generator.pt")
    assert meta["epoch"] == EPOCHS and sum(p.numel() for p in generator.parameters()) > 0
    _, disc_meta = load_discriminator(repo / "models" / "dcgan" / "discriminator.pt")
    assert disc_meta["epoch"] == EPOCHS, disc_meta
    log = (repo / "metrics" / "dcgan" / "train_log.csv").read_text().splitlines()
    assert len(log) == 1 + EPOCHS, log

    # Ray Train's checkpoints stay under <storage>/<run name>/checkpoint_*/.
    run_dir = storage / train["run_name"]
    checkpoints = sorted(run_dir.glob("checkpoint_*/state.pt"))
    assert checkpoints, sorted(str(p.relative_to(storage)) for p in storage.rglob("*"))[:30]

    # The job's MLflow run on the server: 2 workers, one metric point per epoch (logged by
    # rank 0, wherever it ran), and the driver's artifacts served by the server.
    assert run is not None and run.info.status == "FINISHED", context
    assert run.data.tags["world_size"] == "2", run.data.tags
    assert run.data.tags["ray.address"] not in ("", "local"), run.data.tags
    assert run.data.tags["ray.run_name"] == train["run_name"]
    for key, history in histories.items():
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1)), (key, history)
    assert "plots/train_loss.png" in artifacts, artifacts
    assert list((tmp_path / "mlflow" / "artifacts").rglob("train_loss.png")), artifacts
    print(f"cluster up + submit + probes: {seconds:.0f} s")


def test_upload_keeps_the_code_and_drops_data_and_outputs(tmp_path):
    """The job's working dir, as Ray packs it with `submit_train`'s excludes (and .gitignore)."""
    import zipfile

    from ray._private.runtime_env.packaging import create_package

    from pipeline.cluster import UPLOAD_EXCLUDES

    repo = tiny_repo(tmp_path)
    for rel in ("data/prepared/train.npz", "ray_results/x/state.pt", "mlruns/0/meta.yaml",
                "mlartifacts/1/a.png", ".venv/bin/python", "mlflow.db"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_bytes(b"x")
    (repo / "data" / ".gitignore").write_text("/prepared\n")
    package = tmp_path / "pkg.zip"
    create_package(str(repo), package, include_gitignore=True, excludes=UPLOAD_EXCLUDES)
    names = set(zipfile.ZipFile(package).namelist())
    for rel in ("stages/train.py", "params.yaml", "pipeline/train/launcher.py",
                "pipeline/data/__init__.py", "pipeline/models/__init__.py"):
        assert rel in names, (rel, sorted(n for n in names if n.startswith("pipeline/")))
    leaked = [n for n in names if n.startswith(("data/", "ray_results/", "mlruns/",
                                                "mlartifacts/", ".venv/", ".git/"))
              or n == "mlflow.db"]
    assert not leaked, leaked
