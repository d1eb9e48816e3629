"""Committed results hold no path into the checkout they were made in (a moved or copied
checkout must not point back at the original): every string in the committed metrics, models
and benchmark JSON files and in dvc.lock is relative, or a temp file of a benchmark run."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import yaml

from conftest import REPO

TRACKED = ("metrics", "models", "benchmarks/results", "dvc.lock")


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def absolute(text: str) -> bool:
    """An absolute path or a URI naming one; /tmp (a benchmark's scratch file) is no checkout."""
    if text.startswith("sqlite:///"):  # sqlite:///relative.db, sqlite:////absolute.db
        path = text.removeprefix("sqlite:///")
    else:
        path = text.removeprefix("file://")
    return path.startswith("/") and not path.startswith("/tmp/")


def test_committed_results_hold_no_absolute_path() -> None:
    files = subprocess.run(["git", "ls-files", *TRACKED], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    parsed = [f for f in files if f.endswith((".json", ".lock"))]
    assert "models/dcgan/run.json" in parsed and "dvc.lock" in parsed
    found = []
    for name in parsed:
        text = (REPO / name).read_text()
        data = yaml.safe_load(text) if name.endswith(".lock") else json.loads(text)
        found += [f"{name}: {s}" for s in strings(data) if absolute(s)]
    assert not found, found


def test_the_check_catches_paths_and_uris() -> None:
    assert absolute("/work/main/data/prepared/train.npz")
    assert absolute("sqlite:////work/main/mlflow.db") and absolute("file:///home/u/mlartifacts")
    assert not absolute("sqlite:///mlflow.db") and not absolute("data/prepared/train.npz")
    assert not absolute("/tmp/evalwork/featurenet.pt") and not absolute("http://127.0.0.1:5000/")
