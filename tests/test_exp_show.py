"""Two DVC experiments side by side: `make compare` (pipeline/compare.py) prints the key metrics
of the workspace, its commit and each experiment in one table that fits 160 columns, with the
params that differ; the data report (metrics/data.json) is compared by nothing.

The experiments are real `dvc exp run -S` runs of a one-stage stand-in pipeline (no torch, a
second each) whose metrics files carry the keys of the committed metrics/*.json, scaled by the
params, so the table is read from DVC's own `exp show --json` of real experiment commits.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from pipeline.compare import Run, runs_from_json, table

from conftest import BIN, REPO, repo_env

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]

# The stand-in stage: the committed metrics with FID, recall and AUC moved by the params.
STAGE = """\
import json, os, yaml
p = yaml.safe_load(open("params.yaml"))
scale = 2 / p["train"]["epochs"] * 16 / p["model"]["g_features"]
os.makedirs("metrics", exist_ok=True)
for name in ("quality", "detector", "train", "featurenet", "data", "crossgen", "privacy"):
    m = json.load(open(f"committed/{name}.json"))
    for k, v in m.items():
        if isinstance(v, float) and k.startswith("fid_domain_") and "floor" not in k:
            m[k] = round(v * scale, 4)
        elif isinstance(v, float) and k.startswith("recall_domain_") and "floor" not in k:
            m[k] = round(v / scale / 2, 4)
        elif k == "detector_auc":
            m[k] = round(1 - (1 - v) * scale, 6)
        elif k == "leave_one_out":
            v["mean_ap"] = round(1 - (1 - v["mean_ap"]) * scale, 6)
    if name == "train":
        m["epoch"] = p["train"]["epochs"]
    json.dump(m, open(f"metrics/{name}.json", "w"))
"""

DVC_YAML = {"stages": {"run": {
    "cmd": "python stage.py",
    "deps": ["stage.py"],
    "params": ["train", "model", "evaluate"],
    "outs": [{"metrics/data.json": {"cache": False}}],  # the data report: not a metric
    "metrics": [{f"metrics/{n}.json": {"cache": False}}
                for n in ("featurenet", "train", "quality", "detector", "crossgen", "privacy")],
}}}


def dvc(repo, env, *args: str, **extra: str) -> str:
    done = subprocess.run([str(BIN / "dvc"), *args], cwd=repo, env={**env, **extra},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def two_experiments(tmp_path_factory):
    repo = tmp_path_factory.mktemp("exps") / "repo"
    (repo / "committed").mkdir(parents=True)
    committed = {"train": "dcgan/train"}  # the default model's, one per zoo family
    for name in ("quality", "detector", "train", "featurenet", "data", "crossgen", "privacy"):
        text = (REPO / "metrics" / f"{committed.get(name, name)}.json").read_text()
        (repo / "committed" / f"{name}.json").write_text(text)
    params = yaml.safe_load((REPO / "params.yaml").read_text())  # the real params tree
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / "stage.py").write_text(STAGE)
    (repo / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    env = repo_env(repo, PYTHONPATH=str(REPO), COLUMNS="160")
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
    dvc(repo, env, "init", "-q")
    dvc(repo, env, "repro")
    subprocess.run([*GIT, "add", "-A"], cwd=repo, check=True, capture_output=True)
    subprocess.run([*GIT, "commit", "-qm", "baseline"], cwd=repo, check=True, capture_output=True)
    epochs = params["train"]["epochs"]
    dvc(repo, env, "exp", "run", "-n", "more-epochs", "-S", f"train.epochs={epochs * 2}")
    # `exp run` starts from the workspace, which holds the last experiment's params.
    dvc(repo, env, "exp", "run", "-n", "small-g", "-S", f"train.epochs={epochs}", "-S",
        "model.g_features=8", "-S", "train.lr_g=0.002")
    return repo, env


@pytest.mark.integration
def test_make_compare_shows_both_experiments_key_metrics_in_160_columns(two_experiments):
    repo, env = two_experiments
    done = subprocess.run([sys.executable, "-m", "pipeline.compare"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    lines = out.splitlines()
    assert max(map(len, lines)) <= 160, out
    header = lines[0]
    quality = json.loads((REPO / "metrics" / "quality.json").read_text())
    size = next(m.group(1) for k in quality if (m := re.fullmatch(r"fid_domain_(\d+k?)", k)))
    for column in (f"FID {size}", f"floor {size}", f"recall {size}", "det AUC", "LOO AP",
                   "MIA", "TSTR", "train.epochs", "model.g_features", "train.lr_g"):
        assert column in header, (column, header)
    assert "class_counts" not in out and "T-shirt" not in out
    rows = {line.split()[0]: line.split() for line in lines[2:6]}
    assert set(rows) == {"workspace", "main", "more-epochs", "small-g"}, out
    # Each row shows what its experiment wrote (the stand-in's FID moved by the params).
    shown = json.loads(dvc(repo, env, "exp", "show", "--json"))
    fids = {r.name.split()[0]: r.metrics[f"fid_domain_{size}"] for r in runs_from_json(shown)}
    for name, row in rows.items():
        assert f"{fids[name]:.4g}" in row, (name, row, fids)
    assert fids["more-epochs"] < fids["main"] < fids["small-g"]


@pytest.mark.integration
def test_dvc_exp_show_does_not_compare_the_data_report(two_experiments):
    repo, env = two_experiments
    table_160 = dvc(repo, env, "exp", "show", "--no-pager", "--only-changed")
    assert "more-epochs" in table_160 and "small-g" in table_160
    csv = dvc(repo, env, "exp", "show", "--csv")
    assert "class_counts" not in csv and "counts.train" not in csv
    assert "fid_domain_" in csv and "detector_auc" in csv


def test_table_marks_sizes_that_differ_and_leaves_out_absent_metrics():
    runs = [Run("workspace", {"fid_domain_10k": 27.894, "detector_auc": 0.99929},
                {"train.epochs": 8, "seed": 0}),
            Run("  short (abc1234)", {"fid_domain_2k": 40.5, "detector_auc": 0.9},
                {"train.epochs": 1, "seed": 0})]
    out = table(runs)
    header, *_ = out.splitlines()
    assert "FID" in header and not re.search(r"FID \d", header)  # two sizes: none in header
    assert "27.89 @10k" in out and "40.5 @2k" in out
    assert "FID-Inc" not in header and "recall" not in header  # nobody has them
    assert "train.epochs" in header and "seed" not in header  # only params that differ
    assert "0.9993" in out


def test_privacy_columns_are_the_default_models_not_another_familys():
    metrics = {"families.dcgan-n256.best_tpr_at_1pct_fpr": 0.047,
               "families.dcgan.best_tpr_at_1pct_fpr": 0.019,
               "tstr.families.cdcgan-dp.tstr_over_trtr": 0.628,
               "tstr.families.dcgan.tstr_over_trtr": 0.8969}
    header, _, row, *_ = table([Run("workspace", metrics, {})]).splitlines()
    assert header.split() == ["run", "MIA", "TSTR"]
    assert row.split() == ["workspace", "0.019", "0.897"]


def test_runs_from_json_names_baselines_experiments_and_failures():
    def data(fid: float) -> dict:
        return {"metrics": {"metrics/quality.json": {"data": {"fid_domain_300": fid}}},
                "params": {"params.yaml": {"data": {"train": {"epochs": 2}}}}}

    shown = [
        {"rev": "workspace", "name": None, "data": data(1.0), "error": None,
         "experiments": None},
        {"rev": "a" * 40, "name": "main", "data": data(2.0), "error": None, "experiments": [
            {"executor": None, "name": "ok", "revs": [
                {"rev": "b" * 40, "name": "ok", "data": data(3.0), "error": None}]},
            {"executor": None, "name": "bad", "revs": [
                {"rev": "c" * 40, "name": "bad", "data": {}, "error": {"msg": "x"}}]},
        ]},
    ]
    runs = runs_from_json(shown)
    assert [r.name for r in runs] == ["workspace", "main (aaaaaaa)", "  ok (bbbbbbb)",
                                      "  bad (ccccccc) (failed)"]
    assert runs[2].metrics == {"fid_domain_300": 3.0} and runs[2].params == {"train.epochs": 2}
    assert runs[3].metrics == {}


def test_the_default_models_train_json_is_the_one_shown_whatever_the_file_order():
    for order in (["vae", "dcgan", "sngan"], ["dcgan", "vae", "sngan"]):
        metrics = {f"metrics/{f}/train.json": {"data": {"epoch": 8 if f == "dcgan" else 2,
                                                         "total_seconds": 1.0}}
                   for f in order}
        metrics["metrics/crossgen.json"] = {"data": {"leave_one_out": {"mean_ap": 0.9}}}
        (run,) = runs_from_json([{"rev": "workspace", "name": None, "error": None,
                                  "experiments": None, "data": {"metrics": metrics}}])
        assert run.metrics["epoch"] == 8 and run.metrics["leave_one_out.mean_ap"] == 0.9
