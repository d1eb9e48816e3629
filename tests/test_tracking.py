"""Tracking: fail fast on an unreachable server; run links open MLflow's model-training view;
what the run page shows (YAML params, few metrics, counts as tags, the description with floors,
the DVC experiment as run name); only the default pipeline's generator becomes `champion`."""

import subprocess
import time

import pytest

from pipeline.config import MlflowConfig, parse_params
from pipeline.errors import UserError
from pipeline.provenance import champion_blocker, version_tags
from pipeline.run_page import (
    compose_note,
    detect_summary,
    epoch_metrics,
    quality_summary,
    split_note,
    train_summary,
)
from pipeline.tracking import Tracker, champion_uri, run_url, tracking_uri, yaml_value

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


# -- what the run page shows -----------------------------------------------------------------

QUALITY = {"device": "cpu", "n_domain": 300, "fid_domain_300": 40.5, "fid_domain_floor_300": 2.5,
           "kid_domain_300_mean": 1.2, "kid_domain_300_std": None,
           "kid_domain_floor_300_mean": 0.01, "kid_domain_floor_300_std": None,
           "precision_domain_300": 0.6, "recall_domain_300": 0.5,
           "precision_domain_floor_300": 0.9, "recall_domain_floor_300": 0.88,
           "kid_domain_300_subset_size": 100}
DETECTOR = {**{f"{name}_{k}": v for name, v in (("detector", 0.99), ("discriminator", 0.7),
                                                 ("spectrum", 0.8))
               for k in ("auc", "ap", "eer", "tpr_at_1fpr", "accuracy")},
            "detector_auc_jpeg75": 0.95, "discriminator_auc_jpeg75": 0.6,
            "spectrum_auc_jpeg75": 0.55, "detector_auc_jpeg75_fakes_only": 0.96,
            "n_train_real": 200, "n_train_fake": 200, "n_test_real": 100, "n_test_fake": 100,
            "device": "cpu"}


def test_params_are_yaml_values():
    assert [yaml_value(v) for v in (None, True, False, 0.001, 64, "fashion-mnist", [],
                                    ["color", "translation"], "2")] == [
        "null", "true", "false", "0.001", "64", "fashion-mnist", "[]", "[color, translation]",
        "'2'"]


def test_summaries_log_few_metrics_and_counts_as_tags():
    quality, detect = quality_summary(QUALITY), detect_summary(DETECTOR)
    # FID sits beside its floor (charts sort by name); counts, sizes and the device are tags.
    assert sorted(quality.metrics) == [
        "quality/fid_domain_300", "quality/fid_domain_floor_300", "quality/kid_domain_300_mean",
        "quality/precision_domain_300", "quality/recall_domain_300"]
    assert quality.tags == {"quality.device": "cpu", "quality.n_domain": "300",
                            "quality.kid_domain_300_subset_size": "100"}
    assert sorted(detect.metrics) == [
        "detect/detector_ap", "detect/detector_auc", "detect/detector_auc_jpeg75",
        "detect/detector_eer", "detect/detector_tpr_at_1fpr", "detect/discriminator_auc",
        "detect/spectrum_auc"]
    assert detect.tags["detect.n_test_fake"] == "100" and "detect.device" in detect.tags
    # Every value beside its real-vs-real floor, in one table.
    assert "| metric | value | real-vs-real floor |" in quality.markdown
    assert "| fid_domain_300 | **40.5** | 2.5 |" in quality.markdown
    assert "| recall_domain_300 | **0.5** | 0.88 |" in quality.markdown
    assert "| detector | **0.99** |" in detect.markdown and "| jpeg75 | 0.95 |" in detect.markdown
    assert epoch_metrics({"loss_d": 1.0, "d_real": None}) == {"curves/loss_d": 1.0}


def test_run_description_keeps_each_part_and_what_the_user_wrote():
    quality, detect = quality_summary(QUALITY), detect_summary(DETECTOR)
    metrics = {**quality.metrics, **detect.metrics}
    note = compose_note("my notes", "detect", detect.markdown, metrics, quality.tags)
    note = compose_note(note, "quality", quality.markdown, metrics, quality.tags)
    changed = quality_summary({**QUALITY, "fid_domain_300": 12.25})
    again = compose_note(note, "quality", changed.markdown, metrics, quality.tags)
    parts = split_note(again)
    assert list(parts) == ["headline", "quality", "detect", "user"]
    assert parts["user"] == "my notes" and parts["detect"] == detect.markdown
    assert "**12.25**" in parts["quality"] and "**40.5**" not in parts["quality"]
    # The headline (what shows while the description is collapsed) comes first.
    first = again.split("\n")[1]
    assert first.startswith("FID (domain, N=300) **40.5**, real floor 2.5")
    assert "detector AUC **0.99**" in first
    assert again.count("[//]: # (gan-forensics: ") == 4  # invisible markers, one per part


def test_train_summary_shows_the_last_grid(tmp_path):
    for epoch in (1, 2):
        (tmp_path / f"epoch_{epoch:03d}.png").write_bytes(b"png")
    summary = train_summary("abc", {"epoch": 2, "total_seconds": 12.3, "mean_images_per_s": 99.0,
                                    "world_size": 2}, tmp_path)
    assert summary.metrics == {"train/total_seconds": 12.3}
    assert "![samples of the last epoch, fixed noise](get-artifact?path=samples%2Fepoch_002.png" \
        "&run_uuid=abc)" in summary.markdown


def test_run_is_named_after_the_dvc_experiment_with_yaml_params(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_EXP_NAME", "lr-sweep")
    cfg = MlflowConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="t")
    tracker = Tracker.start(cfg, "gan-0123", {"data.source": None, "train.channels_last": True,
                                              "train.diffaugment": ["color"]},
                            {"ray.run_name": "gan-0123"})
    tracker.log_summary(quality_summary(QUALITY))
    tracker.close()
    run = MlflowClient(cfg.tracking_uri).get_run(tracker.run_id)
    assert run.info.run_name == "lr-sweep"
    assert run.data.params == {"data.source": "null", "train.channels_last": "true",
                               "train.diffaugment": "[color]"}
    assert "| fid_domain_300 | **40.5** | 2.5 |" in run.data.tags["mlflow.note.content"]
    assert run.data.tags["quality.n_domain"] == "300"
    found = Tracker.find(cfg, "ray.run_name", "gan-0123")  # how a resumed training finds it
    assert found is not None and found.run_id == tracker.run_id


# -- the registry's champion -------------------------------------------------------------------

def _git_repo(path, params_text: str) -> None:
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=path, check=True)
    (path / "params.yaml").write_text(params_text)
    subprocess.run([*git, "add", "params.yaml"], cwd=path, check=True)
    subprocess.run([*git, "commit", "-qm", "params"], cwd=path, check=True)


def test_champion_only_for_the_committed_params_on_main_outside_dvc_exp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    _git_repo(tmp_path, "train:\n  epochs: 3\n")
    committed = parse_params({"train": {"epochs": 3}})
    assert champion_blocker(committed) is None
    assert "params differ" in champion_blocker(parse_params({"train": {"epochs": 1}}))
    monkeypatch.setenv("DVC_EXP_NAME", "tiny-exp")
    assert "dvc exp run" in champion_blocker(committed)
    assert version_tags()["dvc.exp_name"] == "tiny-exp"
    monkeypatch.delenv("DVC_EXP_NAME")
    (tmp_path / "params.yaml").write_text("train:\n  epochs: 1\n")  # uncommitted edit
    assert "params differ" in champion_blocker(parse_params({"train": {"epochs": 1}}))
    subprocess.run(["git", "checkout", "-q", "-b", "feature"], cwd=tmp_path, check=True)
    assert "branch is feature" in champion_blocker(committed)
    tags = version_tags()
    assert len(tags["git.commit"]) == 40 and "dvc.exp_name" not in tags


def test_only_the_champion_alias_moves_on_registration(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    cfg = MlflowConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="t")
    tracker = Tracker.start(cfg, "run", {})
    client = MlflowClient(cfg.tracking_uri)
    client.create_registered_model("g")
    for version, champion in (("1", True), ("2", False)):  # v2: an experiment's
        client.create_model_version("g", f"runs:/{tracker.run_id}/generator", tracker.run_id)
        tracker.label_version("g", version, {"git.commit": "c" * 40}, champion=champion)
    tracker.close()
    assert str(client.get_model_version_by_alias("g", "champion").version) == "1"
    assert client.get_model_version("g", "2").tags == {"git.commit": "c" * 40}
    assert champion_uri("g") == "models:/g@champion"


# -- portable checkouts ------------------------------------------------------------------------

def _files(root) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_a_copied_checkout_writes_only_inside_itself(tmp_path, monkeypatch):
    """`cp -r` a checkout with its mlflow.db, run again in the copy: new runs, new artifacts and
    the old runs' artifact reads all stay inside the copy; run.json holds no absolute path."""
    import json
    import shutil

    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    old, new = tmp_path / "checkout", tmp_path / "copy"
    old.mkdir()
    (tmp_path / "grid.png").write_bytes(b"png")
    cfg = MlflowConfig(experiment="portable")

    def one_run(root):
        monkeypatch.chdir(root)
        tracker = Tracker.start(cfg, "gan-1", {})
        tracker.log_artifact(tmp_path / "grid.png", "samples")
        tracker.log_dataset("train", root / "data.npz", "training", "0" * 64, 10)
        tracker.write_run_file(root / "run.json")
        tracker.close()
        return tracker.run_id

    first = one_run(old)
    shutil.copytree(old, new)
    before = _files(old)
    second = one_run(new)

    assert _files(old) == before  # nothing written to, or changed in, the original
    assert (new / "mlartifacts" / second / "artifacts" / "samples" / "grid.png").is_file()
    info = json.loads((new / "run.json").read_text())
    assert info["tracking_uri"] == "sqlite:///mlflow.db" and str(tmp_path) not in json.dumps(info)
    client = MlflowClient(f"sqlite:///{new / 'mlflow.db'}")
    for run_id in (first, second):
        run = client.get_run(run_id)
        assert run.info.artifact_uri.startswith((new / "mlartifacts").as_uri())
        assert json.loads(run.inputs.dataset_inputs[0].dataset.source)["uri"] == "data.npz"
    shutil.rmtree(old)  # the old checkout gone: the copy still reads the first run's files
    assert client.download_artifacts(first, "samples/grid.png", str(tmp_path))
    assert Tracker.reopen(cfg, new / "run.json").uri == f"sqlite:///{new / 'mlflow.db'}"
