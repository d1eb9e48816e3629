"""The detect stage: detector training, baselines, robustness transforms, outs and errors.

Real images are sklearn's digits at 28x28; the "GAN" fakes are trivially different (uniform
noise), so a working detector must separate them almost perfectly after one short epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import DetectConfig
from pipeline.data.arrays import save_split
from pipeline.data.images import resize_images
from pipeline.detect import load_detector, predict, score_images
from pipeline.detect.baselines import SpectrumDetector, azimuthal_spectrum, discriminator_scores
from pipeline.detect.robustness import gaussian_blur, jpeg, perturbations
from pipeline.detect.run import load_detect_data, run_detect, write_outputs
from pipeline.detect.scores import roc_auc
from pipeline.detect.train import train_detector
from pipeline.device import resolve_device
from pipeline.errors import UserError
from pipeline.models import build_models, make_checkpoint, save_checkpoint

CFG = DetectConfig(device="cpu", epochs=1, batch_size=32, lr=2e-3, width=8)


@pytest.fixture(scope="module")
def digits28() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    small = np.round(d.images * 255 / 16).astype(np.uint8)[..., None]  # (N, 8, 8, 1)
    return resize_images(small, 28), d.target.astype(np.int64)


def noise(n: int, seed: int, shape: tuple[int, ...] = (28, 28, 1)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def write_fakes(path: Path, images: np.ndarray, noise_seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, images=images, labels=np.full(len(images), -1, dtype=np.int64),
                        class_names=np.array([str(i) for i in range(10)]),
                        noise_seed=np.int64(noise_seed))


def write_gan(dest: Path, size: int = 28) -> tuple[Path, Path]:
    """A tiny random DCGAN as the train stage saves it: (generator.pt, discriminator.pt)."""
    torch.manual_seed(0)
    cfg = {"latent_dim": 8, "g_features": 4, "d_features": 4, "conditional": False,
           "embed_dim": 4}
    G, D = build_models(cfg, (1, size, size), 10)
    meta = {"model_config": cfg, "image_shape": (1, size, size), "num_classes": 10}
    save_checkpoint(dest / "generator.pt", make_checkpoint(**meta, generator=G))
    save_checkpoint(dest / "discriminator.pt", make_checkpoint(**meta, discriminator=D))
    return dest / "generator.pt", dest / "discriminator.pt"


@pytest.fixture
def workspace(tmp_path: Path, digits28) -> Path:
    """tmp_path with data/prepared (digits), data/generated (noise) and models/discriminator.pt."""
    images, labels = digits28
    names = [str(i) for i in range(10)]
    prepared = tmp_path / "data" / "prepared"
    save_split(prepared / "train.npz", images[:240], labels[:240], names)
    save_split(prepared / "val.npz", images[240:260], labels[240:260], names)
    save_split(prepared / "test.npz", images[260:360], labels[260:360], names)
    write_fakes(tmp_path / "data" / "generated" / "detector_train.npz", noise(200, 1), 11)
    write_fakes(tmp_path / "data" / "generated" / "detector_test.npz", noise(60, 2), 12)
    (tmp_path / "models").mkdir()
    write_gan(tmp_path / "models")
    return tmp_path


def test_detector_learns_noise_vs_digits(digits28) -> None:
    images, _ = digits28
    model = train_detector(images[:200], noise(200, 0), CFG, seed=0, log=False)
    real, fake = predict(model, images[300:400]), predict(model, noise(100, 9))
    labels = np.r_[np.zeros(100), np.ones(100)]
    assert roc_auc(labels, np.r_[real, fake]) > 0.95


def test_load_detect_data_balances_without_reuse(workspace: Path) -> None:
    data = load_detect_data(workspace / "data" / "prepared", workspace / "data" / "generated", 0)
    assert len(data.real_train) == len(data.fake_train) == 200  # 240 real -> seeded 200
    assert len(data.real_test) == len(data.fake_test) == 60  # 100 real test -> seeded 60
    real = {img.tobytes() for img in data.real_train}
    assert not real & {img.tobytes() for img in data.real_test}  # digits has no duplicates
    again = load_detect_data(workspace / "data" / "prepared", workspace / "data" / "generated", 0)
    np.testing.assert_array_equal(data.real_test, again.real_test)  # seeded


def test_run_detect_and_outputs(workspace: Path) -> None:
    data = load_detect_data(workspace / "data" / "prepared", workspace / "data" / "generated", 0)
    result = run_detect(data, workspace / "models" / "discriminator.pt", CFG, 0,
                        torch.device("cpu"), log=False)
    m = result.metrics
    assert m["detector_auc"] > 0.95 and m["detector_accuracy"] > 0.8
    assert m["spectrum_auc"] > 0.95  # noise has a flat spectrum, digits do not
    for key in ("detector_eer", "detector_tpr_at_1fpr", "discriminator_auc", "discriminator_eer",
                "detector_auc_jpeg75", "detector_auc_blur1.0", "spectrum_auc_jpeg75",
                "discriminator_auc_blur1.0", "detector_auc_jpeg75_fakes_only"):
        assert 0.0 <= m[key] <= 1.0, key
    assert (m["n_test_real"], m["n_test_fake"], m["n_train_real"]) == (60, 60, 200)

    out = workspace / "out"
    write_outputs(result, CFG, out / "detector.pt", out / "detector.json", out / "roc.csv",
                  out / "detector")
    assert json.loads((out / "detector.json").read_text()) == m
    rows = (out / "roc.csv").read_text().splitlines()
    assert rows[0] == "fpr,tpr" and rows[1] == "0.000000,0.000000" and 3 <= len(rows) <= 201
    assert (out / "detector" / "roc.png").stat().st_size > 1000
    ckpt = torch.load(out / "detector.pt", weights_only=True)
    assert ckpt["image_shape"] == [1, 28, 28] and ckpt["config"] == {"width": 8}
    # The saved detector scores as the in-memory one did.
    np.testing.assert_allclose(score_images(out / "detector.pt", data.fake_test),
                               predict(result.model, data.fake_test), atol=1e-6)


def test_score_images_converts_other_sizes(workspace: Path, digits28) -> None:
    data = load_detect_data(workspace / "data" / "prepared", workspace / "data" / "generated", 0)
    model = train_detector(data.real_train, data.fake_train, CFG, 0, log=False)
    from pipeline.detect import save_detector

    save_detector(workspace / "d.pt", model, {"width": 8}, (1, 28, 28))
    loaded, meta = load_detector(workspace / "d.pt")
    assert meta["image_shape"] == [1, 28, 28]
    with pytest.warns(UserWarning, match="resizing"):
        p = score_images(workspace / "d.pt", noise(5, 3, (16, 16, 3)))
    assert p.shape == (5,) and ((p >= 0) & (p <= 1)).all()
    with pytest.raises(UserError, match="detector not found"):
        score_images(workspace / "missing.pt", noise(2, 0))


def test_discriminator_scores_sign() -> None:
    class Confident(torch.nn.Module):  # says "real" with logit +5 for everything
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((len(x),), 5.0)

    p = discriminator_scores(Confident(), noise(3, 0))
    np.testing.assert_allclose(p, 1 / (1 + np.exp(5.0)))  # P(fake) = sigmoid(-logit)


def test_spectrum_detector_finds_upsampling_checkerboard(digits28) -> None:
    images, _ = digits28
    # Fakes: the same kind of digits plus a faint period-2 checkerboard, the fingerprint of
    # transposed convolutions (Durall et al. 2020); invisible to the eye, a spike in the spectrum.
    checker = (np.indices((28, 28)).sum(0) % 2 * 6).astype(np.int16)[None, :, :, None]
    fakes = np.clip(images.astype(np.int16) + checker, 0, 255).astype(np.uint8)
    feats = azimuthal_spectrum(images[:4])
    # Rings of radius 0..20: the corner (14, 14) from the centre is 19.8 px away.
    assert feats.shape == (4, 21) and feats.min() == 0 and feats.max() == 1
    det = SpectrumDetector().fit(images[:300], fakes[300:600])
    p = np.r_[det.predict(images[600:700]), det.predict(fakes[700:800])]
    assert roc_auc(np.r_[np.zeros(100), np.ones(100)], p) > 0.95


def test_perturbations(digits28) -> None:
    images = digits28[0][:8]
    for fn in perturbations(75, 1.0).values():
        out = fn(images)
        assert out.dtype == np.uint8 and out.shape == images.shape
    assert list(perturbations(75, 1.0)) == ["jpeg75", "blur1.0"]
    assert np.abs(jpeg(images, 95).astype(int) - images).mean() < 3  # near-lossless
    rgb = noise(2, 0, (16, 16, 3))
    assert jpeg(rgb, 50).shape == rgb.shape
    flat = np.full((1, 8, 8, 1), 100, dtype=np.uint8)
    np.testing.assert_array_equal(gaussian_blur(flat, 2.0), flat)  # reflect edges: no halo
    # Blur removes high-frequency energy (noise variance drops).
    assert gaussian_blur(noise(2, 1), 1.0).astype(float).std() < noise(2, 1).std() / 2


def _error(workspace: Path) -> str:
    with pytest.raises(UserError) as exc:
        load_detect_data(workspace / "data" / "prepared", workspace / "data" / "generated", 0)
    return str(exc.value)


def test_mismatched_shapes_name_the_file(workspace: Path) -> None:
    write_fakes(workspace / "data" / "generated" / "detector_test.npz",
                noise(10, 2, (32, 32, 3)), 12)
    msg = _error(workspace)
    assert "detector_test.npz: images are (H, W, C) (32, 32, 3)" in msg and "(28, 28, 1)" in msg


def test_too_few_real_test_images(workspace: Path) -> None:
    write_fakes(workspace / "data" / "generated" / "detector_test.npz", noise(150, 2), 12)
    msg = _error(workspace)
    assert "test.npz: 100 real test images, fewer than the 150 fakes" in msg
    assert "generate.num_detector_test <= 100" in msg


def test_missing_and_overlapping_fakes(workspace: Path) -> None:
    write_fakes(workspace / "data" / "generated" / "detector_test.npz", noise(10, 2), 11)
    assert "same noise seed" in _error(workspace)
    (workspace / "data" / "generated" / "detector_train.npz").unlink()
    assert "detector_train.npz: not found" in _error(workspace)


def test_cuda_without_gpu_is_user_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError, match="detect.device: cuda requested"):
        resolve_device("cuda", "detect.device")
    assert resolve_device("auto") == torch.device("cpu")


def test_stage_end_to_end(workspace: Path, run_stage, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    from pipeline.config import MlflowConfig
    from pipeline.tracking import Tracker

    monkeypatch.chdir(workspace)  # the sqlite store keeps artifacts in ./mlartifacts
    mlflow_cfg = MlflowConfig(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
    tracker = Tracker.start(mlflow_cfg, "test", {})
    tracker.write_run_file(workspace / "models" / "run.json")
    tracker.close()
    params = {"detect": CFG.model_dump(), "mlflow": mlflow_cfg.model_dump()}
    args = ["--real", "data/prepared", "--fake", "data/generated", "--discriminator",
            "models/discriminator.pt", "--run", "models/run.json", "--model", "models/detector.pt",
            "--metrics", "metrics/detector.json", "--roc", "metrics/roc.csv", "--plots",
            "metrics/detector"]
    res = run_stage("detect", *args, cwd=workspace, params=params)
    assert res.returncode == 0, res.stderr
    assert "spectrum" in res.stdout and "jpeg75" in res.stdout
    metrics = json.loads((workspace / "metrics" / "detector.json").read_text())
    assert metrics["detector_auc"] > 0.9
    assert (workspace / "metrics" / "detector" / "roc.png").is_file()
    run = MlflowClient(mlflow_cfg.tracking_uri).get_run(tracker.run_id)
    assert run.data.metrics["detect/detector_auc"] == pytest.approx(metrics["detector_auc"])
    logged = MlflowClient(mlflow_cfg.tracking_uri).list_artifacts(tracker.run_id, "detect")
    assert sorted(f.path for f in logged) == ["detect/detector.json", "detect/roc.csv",
                                              "detect/roc.png"]

    # A user error: one line naming the file, exit 1, and the previous outs stay.
    (workspace / "models" / "discriminator.pt").write_bytes(b"junk")
    res = run_stage("detect", *args, cwd=workspace, params=params)
    assert res.returncode == 1
    assert res.stderr.startswith("error: models/discriminator.pt: not a readable checkpoint")
    assert len(res.stderr.strip().splitlines()) == 1
    assert json.loads((workspace / "metrics" / "detector.json").read_text()) == metrics


def test_generate_then_detect(workspace: Path) -> None:
    """The generate stage's outs feed detect as they are (labels -1, noise seeds, layout)."""
    from pipeline.config import GenerateConfig
    from pipeline.generate import generate_splits

    gen, disc = workspace / "models" / "generator.pt", workspace / "models" / "discriminator.pt"
    cfg = GenerateConfig(num_eval=4, num_detector_train=100, num_detector_test=40, batch_size=64)
    generate_splits(gen, workspace / "data" / "generated", cfg, seed=0, device="cpu")
    data = load_detect_data(workspace / "data" / "prepared", workspace / "data" / "generated", 0)
    assert (len(data.fake_train), len(data.fake_test), len(data.real_test)) == (100, 40, 40)
    result = run_detect(data, disc, CFG, 0, torch.device("cpu"), log=False)
    assert result.metrics["detector_auc"] > 0.9  # an untrained G's blobs are easy to catch
