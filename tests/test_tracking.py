"""Tracking: fail fast on an unreachable server; run links open MLflow's model-training view."""

import time

import pytest

from pipeline.config import MlflowConfig
from pipeline.errors import UserError
from pipeline.tracking import Tracker, run_url, tracking_uri

from servers import free_port


def test_unreachable_server_fails_fast_with_one_line():
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(UserError) as err:
        Tracker.start(MlflowConfig(tracking_uri=uri), "run", {})
    assert time.monotonic() - started < 10
    message = str(err.value)
    assert uri in message and "unreachable" in message and "\n" not in message


def test_default_store_is_sqlite_at_the_root_and_env_wins(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(MlflowConfig(), tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking_uri(MlflowConfig(), tmp_path) == "http://127.0.0.1:5999"
    assert tracking_uri(MlflowConfig(tracking_uri="sqlite:///x.db")) == "sqlite:///x.db"


def test_run_url_opens_the_model_training_view():
    url = run_url("http://127.0.0.1:5000", "3", "abc")
    assert url == ("http://127.0.0.1:5000/#/experiments/3/runs/abc/model-metrics"
                   "?workflowType=machine_learning")
