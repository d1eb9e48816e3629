"""End to end: `dvc repro prepare` on sklearn's digits in a copy of the repo, then a no-op rerun."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.data.arrays import load_split

from conftest import copy_repo, repo_env

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.mark.integration
def test_dvc_repro_prepare_on_digits(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    copy_repo(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["dataset"] = "digits"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # The copy's own `pipeline` package (PYTHONPATH beats the editable install of /work/main).
    env = repo_env(repo, OMP_NUM_THREADS="1")

    def repro() -> str:
        done = subprocess.run([str(BIN / "dvc"), "repro", "prepare"], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    first = repro()
    assert "Running stage 'prepare'" in first
    splits = {s: load_split(repo / "data" / "prepared" / f"{s}.npz")
              for s in ("train", "val", "test")}
    assert {s.images.shape[1:] for s in splits.values()} == {(28, 28, 1)}
    metrics = json.loads((repo / "metrics" / "data.json").read_text())
    assert metrics["counts"]["total"] == 1797 == sum(len(s.labels) for s in splits.values())
    assert metrics["counts"] == {s: len(v.labels) for s, v in splits.items()} | {"total": 1797}
    assert np.array_equal(np.unique(splits["train"].labels), np.arange(10))
    assert (repo / "dvc.lock").is_file()
    # The data report is a plain out: `dvc metrics show` / `dvc exp show` leave it out.
    shown = subprocess.run([str(BIN / "dvc"), "metrics", "show", "--json"], cwd=repo, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert "data.json" not in shown and "class_counts" not in shown, shown

    second = repro()
    assert "Running stage" not in second
    assert "didn't change" in second or "up to date" in second
