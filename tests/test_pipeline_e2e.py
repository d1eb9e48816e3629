"""The whole pipeline, end to end, on tiny real data (sklearn digits) against a REAL MLflow server.

`dvc repro` runs every stage in a copy of the repo (committed on branch `main`, so its generator
is the registry's `champion`) with 2 Ray workers; then the run is read back over HTTP with
`MlflowClient`, the champion generator is loaded and sampled, and headless Chromium, driven over
the DevTools protocol, checks what the run page shows. A `dvc exp run` then adds its own run and
model version without displacing the champion. Another test kills the server while `train` runs:
the model and metrics files must still land and the error must say what was not logged.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import BIN, REPO, copy_repo, repo_env
from servers import chromium, devtools_page, mlflow_server, stop

pytestmark = pytest.mark.integration

ARTIFACTS = REPO / "tests" / "artifacts"  # screenshots the tests keep (gitignored)

TINY = {
    "data": {"dataset": "digits"},
    "model": {"latent_dim": 16, "g_features": 16, "d_features": 16},
    "train": {"epochs": 2, "batch_size": 32, "max_steps_per_epoch": 6, "grid_size": 16},
    "ray": {"num_workers": 2, "cpus_per_worker": 1},
    "generate": {"num_eval": 300, "num_detector_train": 200, "num_detector_val": 50,
                 "num_detector_test": 100, "batch_size": 100},
    "evaluate": {"num_samples": 300, "kid_subsets": 10, "kid_subset_size": 100,
                 "batch_size": 100, "featurenet": {"epochs": 1, "width": 8},
                 "inception": {"enabled": "off"}},
    "detect": {"epochs": 1, "width": 8, "batch_size": 64, "num_train": 300},
    "mlflow": {"experiment": "e2e", "registered_model": "e2e-generator"},
}
# Two families (the default DCGAN and a tiny VAE), no seed pair: the crossgen stage's every key
# on a seed pair is tests/test_crossgen.py's.
# A third, `cref`, is the privacy audit's reference (learns from val) and its TSTR model
# (class-conditional): the audit stage's every path on one extra training.
TINY_ZOO = {"dcgan": {}, "vae": {"model": {"arch": "vae"}, "train": {"max_steps_per_epoch": 4}},
            "cref": {"model": {"conditional": True},
                     "train": {"split": "val", "max_steps_per_epoch": 3}}}
TINY_CROSSGEN = {"families": ["dcgan", "vae"], "seed_pair": [], "compare": ["cnn"],
                 "num_train": 200, "num_val": 50, "num_test": 100, "epochs": 1,
                 "batch_size": 64, "lr": 0.001, "width": 8}
TINY_PRIVACY = {"families": ["dcgan"], "reference": "cref", "tstr": ["cref"],
                "num_members": 100, "num_generated": 300, "bootstrap": 50, "pool_size": 200,
                "grid_rows": 3, "tstr_num_train": 600, "tstr_epochs": 3, "tstr_batch_size": 64,
                "tstr_lr": 0.002, "tstr_width": 8}
ATTACKS = {f"{a}{c}" for a in ("white_box_d", "black_box_pixel", "black_box_feature")
           for c in ("", "_calibrated")}


GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def tiny_repo(tmp_path: Path, **over: dict) -> Path:
    repo = copy_repo(tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params = _merge(_merge(params, TINY), over)
    params["zoo"], params["crossgen"] = TINY_ZOO, TINY_CROSSGEN
    params["privacy"] = {**params["privacy"], **TINY_PRIVACY}
    params["ray"]["storage_path"] = str(tmp_path / "ray_results")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return repo


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """`dvc repro` of the tiny pipeline against a live server; yields what the tests inspect."""
    tmp = tmp_path_factory.mktemp("e2e")
    repo = tiny_repo(tmp)
    # The default pipeline: its params committed on `main` (pipeline.provenance.champion_blocker).
    subprocess.run(["git", "symbolic-ref", "HEAD", "refs/heads/main"], cwd=repo, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=repo, check=True, capture_output=True)
    subprocess.run([*GIT, "commit", "-qm", "default"], cwd=repo, check=True, capture_output=True)
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
    for rel in ["models/dcgan/generator.pt", "models/dcgan/discriminator.pt",
                "models/featurenet.pt", "models/detector.pt", "models/dcgan/run.json",
                "models/vae/generator.pt", "models/vae/run.json", "metrics/dcgan/train_log.csv",
                "metrics/dcgan/train.json", "metrics/vae/train.json", "metrics/quality.json",
                "metrics/detector.json", "metrics/roc.csv", "metrics/crossgen.json",
                "metrics/crossgen/matrix_auc.png", "data/generated/dcgan/eval.npz",
                "data/generated/vae/detector_val.npz", "dvc.lock"]:
        assert (repo / rel).is_file(), rel
    log = (repo / "metrics" / "dcgan" / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,") and len(log) == 1 + 2  # header + one row per epoch
    quality = json.loads((repo / "metrics" / "quality.json").read_text())
    # The floor is two real sets: close, and far below a barely trained G (a broken feature net
    # or mixed-up real sets fail here); the sample size is what was asked for.
    assert quality["n_domain"] == 300 and quality["kid_domain_300_subset_size"] == 100
    assert 0 <= quality["fid_domain_floor_300"] < 0.2 * quality["fid_domain_300"]
    assert quality["precision_domain_floor_300"] > 0.8 < quality["recall_domain_floor_300"]
    detector = json.loads((repo / "metrics" / "detector.json").read_text())
    # A 2-epoch G and a 4-step VAE are easy to catch: a broken or untrained detector (AUC ~0.5)
    # fails; it was trained on both families and knows them by name.
    assert detector["detector_auc"] > 0.9 and detector["detector_ap"] > 0.9
    assert detector["families"] == ["dcgan", "vae", "cref"]
    assert 0 < detector["detector_threshold"] < 1
    crossgen = json.loads((repo / "metrics" / "crossgen.json").read_text())
    assert list(crossgen["matrix"]) == ["dcgan", "vae"]
    assert crossgen["attribution"]["classes"] == ["real", "dcgan", "vae"]
    # The default recipes are probes (the attributor reads FeatureNet features); the CNN's
    # leave-one-out beside, as TINY_CROSSGEN asks.
    assert crossgen["leave_one_out"]["detector"] == crossgen["attribution"]["attributor"] == \
        "probe"
    assert set(crossgen["leave_one_out"]["compare"]["cnn"]["per_family"]) == {"dcgan", "vae"}
    assert set(crossgen["model_runs"]) == {"dcgan", "vae", "cref"}
    # The audit: every attack with its interval and low-FPR rates, on the N asked for; a
    # 2-epoch G on 1 000 digits is near chance (a broken score, e.g. members and non-members
    # swapped or one image scored, lands far outside); TSTR beside TRTR.
    privacy = json.loads((repo / "metrics" / "privacy.json").read_text())
    assert privacy["num_members"] == privacy["num_nonmembers"] == 100
    audit = privacy["families"]["dcgan"]
    assert set(audit["attacks"]) == ATTACKS
    for r in audit["attacks"].values():
        assert r["num_members"] == r["num_nonmembers"] == 100
        assert r["auc_ci95"][0] <= r["auc"] <= r["auc_ci95"][1] and 0.25 < r["auc"] < 0.75
        assert 0 <= r["tpr_at_0.1pct_fpr"] <= r["tpr_at_1pct_fpr"] <= 1
    with np.load(repo / "data" / "prepared" / "train.npz") as prepared:
        assert audit["num_train_images"] == len(prepared["labels"])  # all of train.npz
        # TSTR trains on as many samples as TRTR has real images (at most tstr_num_train).
        assert privacy["tstr"]["num_train"] == min(600, len(prepared["labels"]))
    assert 0.5 < audit["memorisation"]["median_ratio"] < 2
    assert privacy["tstr"]["families"]["cref"]["tstr_accuracy"] >= 0
    assert 0.5 < privacy["tstr"]["trtr_accuracy"] <= 1
    for png in ("roc_dcgan.png", "memorisation_dcgan.png"):
        assert (repo / "metrics" / "privacy" / png).stat().st_size > 5000
    roc = (repo / "metrics" / "roc.csv").read_text().splitlines()
    first, last = (tuple(float(v) for v in row.split(",")[:2]) for row in (roc[1], roc[-1]))
    assert roc[0].startswith("fpr,tpr") and first == (0.0, 0.0) and last == (1.0, 1.0), roc[:3]
    shown = subprocess.run([str(BIN / "dvc"), "metrics", "show", "--json"], cwd=repo,
                           env=pipeline_run["env"], capture_output=True, text=True, check=True)
    assert "quality.json" in shown.stdout and "detector.json" in shown.stdout
    assert "crossgen.json" in shown.stdout
    again = subprocess.run([str(BIN / "dvc"), "status"], cwd=repo, env=pipeline_run["env"],
                           capture_output=True, text=True, check=True)
    assert "up to date" in again.stdout


def test_one_mlflow_run_tells_the_whole_story(pipeline_run):
    from mlflow.tracking import MlflowClient

    repo, uri = pipeline_run["repo"], pipeline_run["uri"]
    info = json.loads((repo / "models" / "dcgan" / "run.json").read_text())
    vae = json.loads((repo / "models" / "vae" / "run.json").read_text())
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("e2e")
    runs = client.search_runs([exp.experiment_id])
    # One run per model (each zoo family), and the crossgen run that links them.
    families = sorted(r.data.tags.get("zoo.family", "-") for r in runs)
    assert families == ["-", "cref", "dcgan", "vae"], families
    (crossgen,) = (r for r in runs if "zoo.family" not in r.data.tags)
    assert crossgen.info.run_name == "zoo@crossgen" and crossgen.info.status == "FINISHED"
    assert (crossgen.data.tags["zoo.dcgan.run_id"], crossgen.data.tags["zoo.vae.run_id"]) == \
        (info["run_id"], vae["run_id"])
    assert crossgen.data.metrics["crossgen/loo_mean_ap"] == pytest.approx(json.loads(
        (repo / "metrics" / "crossgen.json").read_text())["leave_one_out"]["mean_ap"])
    (vae_run,) = (r for r in runs if r.info.run_id == vae["run_id"])
    assert vae_run.info.run_name.endswith("@vae") and vae_run.data.params["model.arch"] == "vae"
    (run,) = (r for r in runs if r.info.run_id == info["run_id"])
    assert run.info.status == "FINISHED"
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    # Outside `dvc exp run` the run is named after its Ray run (the tag Tracker.find looks up).
    assert run.info.run_name == tags["ray.run_name"] == info["run_name"]
    assert "dvc.exp_name" not in tags
    # Params as YAML writes them, never Python reprs.
    assert params["train.epochs"] == "2" and params["data.dataset"] == "digits"
    assert params["data.source"] == "null" and params["train.diffaugment"] == "[]"
    assert params["ray.use_gpu"] == "false"
    assert not {k: v for k, v in params.items() if v in ("None", "True", "False")}
    # Per-epoch curves; a few summary metrics; counts and sizes are tags, not metrics.
    history = client.get_metric_history(run.info.run_id, "curves/loss_d")
    assert sorted(m.step for m in history) == [1, 2]
    assert {k.split("/")[0] for k in metrics} == {"curves", "detect", "quality", "train",
                                                  "privacy"}
    assert len(metrics) <= 25, sorted(metrics)
    assert not [k for k in metrics if re.search(r"/(n|num)_|subset_size|_std$", k)], metrics
    # detect: 100 test fakes of each of the two families, as many real test images.
    assert tags["quality.n_domain"] == "300" and tags["detect.n_test_fake"] == "300"
    assert tags["generate.n_eval"] == "300"
    # What MLflow shows is what the metrics files say.
    quality = json.loads((repo / "metrics" / "quality.json").read_text())
    detector = json.loads((repo / "metrics" / "detector.json").read_text())
    for key in ("fid_domain_300", "fid_domain_floor_300", "recall_domain_300"):
        assert metrics[f"quality/{key}"] == pytest.approx(quality[key])
    assert metrics["detect/detector_auc"] == pytest.approx(detector["detector_auc"])
    # The description: the headline first, each quality value beside its floor, the last grid.
    note = tags["mlflow.note.content"]
    assert note.split("\n")[1].startswith(
        f"FID (domain, N=300) **{quality['fid_domain_300']:.4g}**, "
        f"real floor {quality['fid_domain_floor_300']:.4g}")
    assert (f"| recall_domain_300 | **{quality['recall_domain_300']:.4g}** | "
            f"{quality['recall_domain_floor_300']:.4g} |") in note
    assert f"| detector | **{detector['detector_auc']:.4g}** |" in note
    assert f"get-artifact?path=samples%2Fepoch_002.png&run_uuid={run.info.run_id}" in note
    assert tags["world_size"] == "2"
    assert tags["device"] == "cpu"
    assert len(tags["git.commit"]) == 40
    assert tags["torch.version"].startswith("2.13")
    assert run.inputs.dataset_inputs, "no dataset logged with log_input"
    dataset = run.inputs.dataset_inputs[0].dataset
    assert dataset.digest and dataset.name
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    nested = {a.path for d in names for a in client.list_artifacts(run.info.run_id, d)}
    everything = names | nested
    assert {"samples/epoch_001.png", "samples/epoch_002.png"} <= everything, everything
    assert any(p.endswith("quality.json") for p in everything), everything
    assert any(p.endswith("detector.json") for p in everything), everything
    assert any(p.endswith("roc.png") for p in everything), everything
    assert {"privacy/privacy.json", "privacy/roc_dcgan.png"} <= everything, everything
    privacy = json.loads((repo / "metrics" / "privacy.json").read_text())
    assert metrics["privacy/best_auc"] == pytest.approx(privacy["families"]["dcgan"]["best_auc"])


def test_registered_generator_loads_and_generates(pipeline_run):
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import CHAMPION, champion_uri

    uri = pipeline_run["uri"]
    client = MlflowClient(uri)
    versions = client.search_model_versions("name='e2e-generator'")
    assert len(versions) == 1
    version = versions[0]
    info = json.loads((pipeline_run["repo"] / "models" / "dcgan" / "run.json").read_text())
    assert version.run_id == info["run_id"]
    # The default pipeline (params committed on main, not a `dvc exp run`) is the champion.
    assert str(client.get_model_version_by_alias("e2e-generator", CHAMPION).version) \
        == str(version.version)
    assert "registered e2e-generator version 1 as @champion" in pipeline_run["stdout"]
    assert len(version.tags["git.commit"]) == 40 and "dvc.exp_name" not in version.tags
    assert any(k.startswith("fid_domain") for k in version.tags), version.tags
    mlflow.set_tracking_uri(uri)
    model = mlflow.pytorch.load_model(champion_uri("e2e-generator"))
    # The default model is class-conditional: the class id rides in one extra last column
    # (pipeline/models/serving.py), and it changes the image.
    z = torch.randn(4, 16)
    with torch.no_grad():
        images = model(torch.cat([z, torch.tensor([[0.0], [3.0], [7.0], [9.0]])], dim=1))
        other = model(torch.cat([z, torch.tensor([[1.0], [4.0], [8.0], [2.0]])], dim=1))
    assert tuple(images.shape) == (4, 1, 28, 28) and not torch.equal(images, other)
    assert float(images.min()) >= -1.0 and float(images.max()) <= 1.0


# The Model metrics tab: section names in order, and each chart card on screen with its metric
# key and what plotly drew in it (line traces: a curve over steps; bar traces: one value).
CHARTS = """(() => {
  const q = (sel, root) => [...(root || document).querySelectorAll(sel)];
  return {
    sections: q('[data-testid="experiment-view-compare-runs-section-header"]')
      .map(h => h.innerText.trim().split(/\\s/)[0]),
    cards: q('[data-testid="experiment-view-compare-runs-card"]').map(c => {
      const r = c.getBoundingClientRect(), h = c.querySelector('h4[title]');
      return {title: h ? h.getAttribute('title') : '',
              onScreen: r.top < innerHeight && r.bottom > 0,
              lines: q('.scatterlayer .trace', c).length, bars: q('.barlayer .trace', c).length};
    })};
})()"""
CHARTS_DRAWN = """(() => {
  const cards = [...document.querySelectorAll('[data-testid="experiment-view-compare-runs-card"]')]
    .filter(c => c.getBoundingClientRect().top < innerHeight);
  const drawn = c => c.querySelector('.scatterlayer .trace, .barlayer .trace');
  return cards.length >= 3 && cards.every(drawn);
})()"""
# The Overview tab's description (the run's markdown note) and the page's text.
DESCRIPTION = """(() => {
  const d = document.querySelector('[data-testid="note-editor-preview-content"]');
  if (!d) return null;
  return {top: d.getBoundingClientRect().top, height: innerHeight, text: d.innerText,
          rows: [...d.querySelectorAll('tr')].map(tr => [...tr.cells].map(c => c.innerText.trim())),
          images: [...d.querySelectorAll('img')].map(i => [i.getAttribute('src'), i.naturalWidth]),
          page: document.body.innerText};
})()"""
# Every name/value row of the Overview's tables (metrics, params): {name: value as shown}.
ROWS = """Object.fromEntries([...document.querySelectorAll('[role=row]')]
  .map(r => [...r.querySelectorAll('[role=cell]')].map(c => c.textContent.trim()))
  .filter(cells => cells.length === 2))"""
CLICK = """(() => {
  const b = [...document.querySelectorAll('button')].find(b => b.getAttribute('aria-label') === %r);
  if (b) b.click();
  return !!b;
})()"""


def test_mlflow_ui_shows_the_run(pipeline_run, tmp_path):
    """The run page in headless Chromium, as a user opens it from `gan-forensics run-url`: the
    Model metrics tab opens on the per-epoch curves; the Overview shows the description with
    each metric beside its floor and the sample grid; params read as YAML."""
    if not chromium():
        pytest.skip("chromium is not installed (make test installs it where apt is available)")
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import run_url

    info = json.loads((pipeline_run["repo"] / "models" / "dcgan" / "run.json").read_text())
    uri = pipeline_run["uri"]
    quality = json.loads((pipeline_run["repo"] / "metrics" / "quality.json").read_text())
    run = MlflowClient(uri).get_run(info["run_id"])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with devtools_page(tmp_path / "profile", 1400, 900) as page:
        page.navigate(run_url(uri, info["experiment_id"], info["run_id"]))
        page.wait_for(CHARTS_DRAWN, timeout=120)  # ~15 s of real time on this machine
        page.evaluate(CLICK % "Close")  # MLflow's assistant panel: more room for the charts
        time.sleep(2)
        charts = page.evaluate(CHARTS)
        page.screenshot(ARTIFACTS / "mlflow-run.png")
        # Sections sort by name: the curves come first, then the few summary numbers.
        sections = charts["sections"]
        assert sections[0] == "curves", sections
        assert sections.index("detect") < sections.index("quality") < sections.index("train")
        shown = [c for c in charts["cards"] if c["onScreen"]]
        assert shown and all(c["title"].startswith("curves/") and c["lines"] and not c["bars"]
                             for c in shown), shown
        assert {"curves/loss_d", "curves/loss_g"} <= {c["title"] for c in shown}, shown

        page.navigate(f"{uri}/#/experiments/{info['experiment_id']}/runs/{info['run_id']}"
                      "?workflowType=machine_learning")
        page.wait_for(DESCRIPTION, timeout=60)
        collapsed = page.evaluate(DESCRIPTION)
        # Visible without scrolling, the headline first: FID beside its floor.
        assert collapsed["top"] < collapsed["height"] - 100, collapsed["top"]
        assert collapsed["text"].startswith(
            f"FID (domain, N=300) {quality['fid_domain_300']:.4g}, real floor "
            f"{quality['fid_domain_floor_300']:.4g}"), collapsed["text"][:200]
        assert page.evaluate(CLICK % "Expand description")
        page.wait_for("[...document.querySelectorAll('[data-testid=\"note-editor-preview-content\"]"
                      " img')].some(i => i.complete && i.naturalWidth > 0)", timeout=30)
        full = page.evaluate(DESCRIPTION)
        shown_params = {k: v for k, v in page.evaluate(ROWS).items() if k in run.data.params}
        page.screenshot(ARTIFACTS / "mlflow-overview.png")
    assert ["metric", "value", "real-vs-real floor"] in full["rows"]
    for key in ("fid_domain_300", "recall_domain_300"):
        floor = key.replace("_300", "").replace("domain", "domain_floor") + "_300"
        assert [key, f"{quality[key]:.4g}", f"{quality[floor]:.4g}"] in full["rows"], full["rows"]
    (src, width), = full["images"]  # the last epoch's sample grid, loaded from the server
    assert "samples%2Fepoch_002.png" in src and width > 100
    assert run.info.run_name in full["page"]
    # Params read as YAML: every one shown, as logged.
    assert shown_params == run.data.params
    assert shown_params["data.source"] == "null" and shown_params["ray.use_gpu"] == "false"


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
    done = _cli(repo, env, "fid", "data/generated/dcgan/eval.npz", "data/prepared/test.npz",
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
    fakes = np.load(repo / "data/generated/dcgan/detector_test.npz")["images"][:3]
    reals = np.load(repo / "data/prepared/test.npz")["images"][:3]
    for i, image in enumerate([*fakes, *reals]):
        Image.fromarray(image[..., 0]).save(folder / f"{'fake' if i < 3 else 'real'}{i}.png")
    done = _cli(repo, env, "detect", str(folder), "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert sorted(r["image"] for r in rows) == sorted(p.name for p in folder.iterdir())
    assert all(0.0 <= r["p_fake"] <= 1.0 and r["source"] in TINY_ZOO for r in rows)
    # Bad input: one line, no traceback, never a silently smaller N.
    for args, expected in [(("fid", "missing.npz", "data/prepared/test.npz"), "missing.npz"),
                           (("fid", "data/generated/dcgan/eval.npz", "data/prepared/test.npz",
                             "--n", "100000"), "fewer than n=100000")]:
        done = _cli(repo, env, *args)
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert expected in done.stderr.strip().splitlines()[-1], done.stderr


def test_dvc_exp_run_with_overrides_tags_its_mlflow_run(pipeline_run):
    from mlflow.tracking import MlflowClient

    repo, env = pipeline_run["repo"], pipeline_run["env"]
    default = json.loads((repo / "models" / "dcgan" / "run.json").read_text())
    subprocess.run([*GIT, "add", "-A"], cwd=repo, check=True, capture_output=True)
    subprocess.run([*GIT, "commit", "-qm", "baseline"], cwd=repo, check=True,
                   capture_output=True)
    done = subprocess.run([str(BIN / "dvc"), "exp", "run", "-n", "tiny-exp",
                           "-S", "train.epochs=1", "-S", "model.g_features=8"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    shown = subprocess.run([str(BIN / "dvc"), "exp", "show", "--json"], cwd=repo, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert "tiny-exp" in shown and "fid_domain_300" in shown and "detector_auc" in shown
    client = MlflowClient(pipeline_run["uri"])
    runs = client.search_runs([client.get_experiment_by_name("e2e").experiment_id],
                              filter_string="tags.`dvc.exp_name` = 'tiny-exp' and "
                              "tags.`zoo.family` = 'dcgan'")
    assert len(runs) == 1 and runs[0].data.params["model.g_features"] == "8"
    run = runs[0]
    # Named after the experiment; the Ray run stays a tag (how a resume finds this run).
    assert run.info.run_name == "tiny-exp" and run.data.tags["ray.run_name"].startswith("gan-")
    # Its generator is a new version, tagged with where it came from; the champion stays the
    # default pipeline's, so `models:/e2e-generator@champion` still loads that one.
    versions = client.search_model_versions("name='e2e-generator'")
    assert len(versions) == 2
    mine, = (v for v in versions if v.run_id == run.info.run_id)
    assert mine.tags["dvc.exp_name"] == "tiny-exp" and len(mine.tags["git.commit"]) == 40
    champion = client.get_model_version_by_alias("e2e-generator", "champion")
    assert champion.run_id == default["run_id"] != run.info.run_id
    assert "not @champion: trained inside `dvc exp run` (tiny-exp)" in done.stdout + done.stderr
    # DVC refuses `-S train.epoch=1` itself; `+train.epoch=1` adds the key, and our config
    # is what rejects it, before any stage runs its work.
    bad = subprocess.run([str(BIN / "dvc"), "exp", "run", "-S", "+train.epoch=1"], cwd=repo,
                         env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "train.epoch: unknown key" in bad.stdout + bad.stderr


# Another embedded Ray on the machine (a second stage, another `dvc exp run`): it must not
# confuse the one a stage starts. Ray's own lookups with no address (Train's placement-group
# cleaner asks the state API) fail with "Found multiple active Ray instances" otherwise.
OTHER_RAY = ("import ray, sys, time; ray.init(num_cpus=1, include_dashboard=False); "
             "print('up', flush=True); sys.stdin.read()")


def test_train_beside_another_embedded_ray(tmp_path):
    repo = tiny_repo(tmp_path, train={"epochs": 4, "max_steps_per_epoch": 8})
    env = repo_env(repo)
    subprocess.run([str(BIN / "dvc"), "repro", "prepare"], cwd=repo, env=env, check=True,
                   capture_output=True, timeout=300)
    other = subprocess.Popen([str(BIN / "python"), "-c", OTHER_RAY], env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        assert other.stdout.readline().strip() == "up"  # bounded: ray.init times out itself
        done = subprocess.run(
            [str(BIN / "python"), "stages/train.py", "--data", "data/prepared/train.npz",
             "--models", "models", "--metrics", "metrics"],
            cwd=repo, env=env, capture_output=True, text=True, timeout=600)
        assert other.poll() is None, "the other Ray's driver died during the stage"
    finally:
        stop(other)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "multiple active Ray" not in done.stderr, \
        done.stderr[-3000:]
    assert len((repo / "metrics" / "train_log.csv").read_text().splitlines()) == 1 + 4
