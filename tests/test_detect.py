"""The detect stage: the shipped detector over {real, families}, its calibrated threshold and
source attribution, baselines, robustness transforms, outs and errors.

Real images are sklearn's digits at 28x28 (rows 0-399: the `digits_gan` fixture's G never saw
them); the fakes of family "dcgan" are samples of that briefly trained DCGAN (conftest
`digits_gan`), which look like digits in pixel statistics, so a detector has to learn GAN
traces, not "noise vs ink"; family "blobs" is the same G untrained.
Measured over 4 fixture seeds, with CFG: detector AUC >= 0.999, EER <= 0.02, the spectrum
baseline AUC 1.0 (transposed convolutions leave a periodic fingerprint), the GAN's own trained
discriminator AUC 0.60-0.81 (untrained: 0.48-0.51, too close on 60 + 60 images to assert on).
Accuracy at the 0.5 threshold is not asserted: after a few dozen steps the detector ranks
perfectly but its threshold can be off (accuracy 0.5-0.62 at AUC 1.0 on 2 seeds of 4). Shapes
a GAN cannot make use uniform noise.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from pipeline.config import DetectConfig
from pipeline.data.arrays import save_split
from pipeline.detect import class_probs, load_detector, predict, score_images
from pipeline.detect.baselines import SpectrumDetector, azimuthal_spectrum, discriminator_scores
from pipeline.detect.robustness import gaussian_blur, jpeg, perturbations
from pipeline.detect.run import load_detect_data, run_detect, train_spec, write_outputs
from pipeline.detect.train import (
    TrainSpec,
    augment,
    make_schedule,
    train_attributor,
    train_detector,
)
from pipeline.device import resolve_device
from pipeline.errors import UserError

from conftest import DigitsGAN

# One thread: on a shared 2-core machine two OpenMP threads ran these steps up to 40x slower.
torch.set_num_threads(1)
CFG = DetectConfig(device="cpu", epochs=4, batch_size=32, lr=2e-3, width=8, aug_prob=0.0)
SPEC = TrainSpec(epochs=4, batch_size=32, lr=2e-3, width=8)


@pytest.fixture(scope="module")
def digits28() -> tuple[np.ndarray, np.ndarray]:
    """sklearn digits at 28 px, as the pipeline's `digits` dataset loads them."""
    from pipeline.data.images import load_digits_dataset

    images, labels, _ = load_digits_dataset(28)
    return images, labels


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(roc_auc_score(labels, scores))


def noise(n: int, seed: int, shape: tuple[int, ...] = (28, 28, 1)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def write_fakes(path: Path, images: np.ndarray, noise_seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, images=images, labels=np.full(len(images), -1, dtype=np.int64),
                        class_names=np.array([str(i) for i in range(10)]),
                        noise_seed=np.int64(noise_seed))


FAMILIES = ["dcgan", "blobs"]  # the trained digits GAN, and the same G untrained (grey blobs)


def write_family(root: Path, family: str, gan: DigitsGAN, counts: tuple[int, int, int],
                 seed: int) -> None:
    """data/generated/<family>/detector_{train,val,test}.npz as the generate stage writes them."""
    for k, (split, n) in enumerate(zip(("train", "val", "test"), counts, strict=True)):
        noise_seed = 100 * seed + k
        write_fakes(root / family / f"detector_{split}.npz",
                    gan.fakes(n, seed=noise_seed, trained=family != "blobs"), noise_seed)


@pytest.fixture
def workspace(tmp_path: Path, digits28, digits_gan: DigitsGAN) -> Path:
    """tmp_path with data/prepared (digits the GAN never saw), data/generated/<family> for two
    families (GAN fakes, untrained-G blobs) and models/dcgan/{generator,discriminator}.pt."""
    import shutil

    images, labels = digits28
    assert digits_gan.train_rows.start >= 380  # the real sets below are held out from G
    names = [str(i) for i in range(10)]
    prepared = tmp_path / "data" / "prepared"
    save_split(prepared / "train.npz", images[:240], labels[:240], names)
    save_split(prepared / "val.npz", images[240:280], labels[240:280], names)
    save_split(prepared / "test.npz", images[280:380], labels[280:380], names)
    for k, family in enumerate(FAMILIES):
        write_family(tmp_path / "data" / "generated", family, digits_gan, (200, 20, 60), k + 1)
    (tmp_path / "models" / "dcgan").mkdir(parents=True)
    shutil.copy(digits_gan.generator, tmp_path / "models" / "dcgan" / "generator.pt")
    shutil.copy(digits_gan.discriminator, tmp_path / "models" / "dcgan" / "discriminator.pt")
    return tmp_path


def load(workspace: Path, families: list[str] = FAMILIES, num_train: int | None = None):
    return load_detect_data(workspace / "data" / "prepared", workspace / "data" / "generated",
                            families, 0, num_train)


def test_gan_fakes_look_like_digits_not_noise(digits28, digits_gan: DigitsGAN) -> None:
    # What keeps the detector tests honest: the fakes match real digits in simple pixel
    # statistics (measured: dark-pixel share 0.39-0.46 vs real 0.47, mean-image error 6-9
    # grey levels vs 5 between real sets), which uniform noise (0.13) and an untrained G's
    # grey blobs (0.00, error 64) do not.
    real = digits28[0][:400].astype(float)
    train_mean = digits28[0][digits_gan.train_rows].astype(float).mean(0)

    def stats(images: np.ndarray) -> tuple[float, float]:
        x = images.astype(float)
        return float((x < 32).mean()), float(np.abs(x.mean(0) - train_mean).mean())

    dark_real, _ = stats(real)
    dark, error = stats(digits_gan.fakes(400, seed=3))
    assert abs(dark - dark_real) < 0.15 and error < 20, (dark, dark_real, error)
    for other in (noise(400, 0), digits_gan.fakes(400, seed=3, trained=False)):
        dark_other, error_other = stats(other)
        assert abs(dark_other - dark_real) > 0.3 or error_other > 40


def test_detector_learns_gan_fakes_vs_digits(digits28, digits_gan: DigitsGAN) -> None:
    images, _ = digits28
    model = train_detector(images[:200], digits_gan.fakes(200, seed=21), SPEC)
    real, fake = predict(model, images[300:400]), predict(model, digits_gan.fakes(100, seed=22))
    labels = np.r_[np.zeros(100), np.ones(100)]
    assert roc_auc(labels, np.r_[real, fake]) > 0.95  # an untrained detector: ~0.5


def test_load_detect_data_balances_without_reuse(workspace: Path) -> None:
    data = load(workspace)
    # Per split: an equal share per family, and as many real images as fakes in all.
    assert [len(f) for f in data.fake_train] == [120, 120] and len(data.real_train) == 240
    assert [len(f) for f in data.fake_val] == [20, 20] and len(data.real_val) == 40
    assert [len(f) for f in data.fake_test] == [50, 50] and len(data.real_test) == 100
    seen = [{img.tobytes() for img in s} for s in (data.real_train, data.real_val,
                                                    data.real_test)]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])  # disjoint
    np.testing.assert_array_equal(data.real_test, load(workspace).real_test)  # seeded
    capped = load(workspace, num_train=100)
    assert [len(f) for f in capped.fake_train] == [50, 50] and len(capped.real_train) == 100


def test_run_detect_and_outputs(workspace: Path) -> None:
    data = load(workspace)
    result = run_detect(data, workspace / "models" / "dcgan" / "discriminator.pt", CFG, 0,
                        torch.device("cpu"), log=False)
    m = result.metrics
    # An untrained detector scores AUC ~0.5, EER ~0.5; a source guess at chance 0.5.
    assert m["detector_auc"] > 0.95 and m["detector_eer"] < 0.1 and m["detector_ap"] > 0.95
    assert m["detector_calibrated_accuracy"] > 0.85 and 0 < m["detector_threshold"] < 1
    assert m["detector_source_accuracy"] > 0.9  # digit-like fakes vs grey blobs
    assert set(m["per_family"]) == set(FAMILIES) and m["families"] == FAMILIES
    assert all(v["auc"] > 0.9 for v in m["per_family"].values()), m["per_family"]
    # Transposed convolutions leave a periodic trace in the spectrum (Durall et al. 2020).
    assert m["spectrum_auc"] > 0.9
    for key in ("detector_accuracy", "detector_tpr_at_1fpr", "discriminator_auc",
                "discriminator_eer", "spectrum_ap",
                "detector_auc_jpeg75", "detector_auc_blur1.0", "spectrum_auc_jpeg75",
                "discriminator_auc_blur1.0", "detector_auc_jpeg75_fakes_only"):
        assert 0.0 <= m[key] <= 1.0, key
    assert (m["n_test_real"], m["n_test_fake"], m["n_train_real"], m["n_val_fake"]) == \
        (100, 100, 240, 40)

    out = workspace / "out"
    write_outputs(result, CFG, out / "detector.pt", out / "detector.json", out / "roc.csv",
                  out / "detector")
    assert json.loads((out / "detector.json").read_text()) == m
    rows = (out / "roc.csv").read_text().splitlines()
    assert rows[0] == "fpr,tpr" and rows[1] == "0.000000,0.000000" and 3 <= len(rows) <= 201
    assert (out / "detector" / "roc.png").stat().st_size > 1000
    ckpt = torch.load(out / "detector.pt", weights_only=True)
    assert ckpt["image_shape"] == [1, 28, 28]
    assert ckpt["config"] == {"width": 8, "classes": ["real", *FAMILIES],
                              "threshold": pytest.approx(m["detector_threshold"])}
    # The saved detector scores as the in-memory one did; P(fake) = 1 - P(real).
    fakes = np.concatenate(data.fake_test)
    np.testing.assert_allclose(score_images(out / "detector.pt", fakes),
                               predict(result.model, fakes), atol=1e-6)
    loaded, _ = load_detector(out / "detector.pt")
    np.testing.assert_allclose(1 - class_probs(loaded, fakes)[:, 0], predict(loaded, fakes),
                               atol=1e-6)


def test_augmented_training_still_learns(workspace: Path) -> None:
    data = load(workspace)
    aug = CFG.model_copy(update={"aug_prob": 0.5})
    result = run_detect(data, workspace / "models" / "dcgan" / "discriminator.pt", aug, 0,
                        torch.device("cpu"), log=False)
    assert result.metrics["detector_auc"] > 0.9


def test_detect_blur_max_bounds_the_training_blur() -> None:
    """detect.blur_max reaches the training spec, and bounds the blur augment() draws: a
    one-pixel checkerboard keeps much of its contrast under sigma <= 0.3, none under up to 3."""
    spec = train_spec(DetectConfig(aug_prob=1.0, blur_max=0.3), seed=0)
    assert (spec.aug_prob, spec.blur_max) == (1.0, 0.3)
    board = np.kron(np.ones((4, 14, 14)), [[0, 255], [255, 0]]).astype(np.uint8)[..., None]

    def contrast(blur_max: float) -> float:
        out = augment(board, TrainSpec(aug_prob=1.0, blur_max=blur_max), np.random.default_rng(0))
        return float(np.abs(np.diff(out.astype(float), axis=2)).mean())  # 255 unblurred

    assert contrast(0.3) > 100 > 5 * contrast(3.0)


@pytest.mark.parametrize("steps", [1, 7, 40])
def test_cosine_schedule_is_the_closed_form(steps: int) -> None:
    """lr_schedule="cosine": the rate at step t is lr (1 + cos(pi t / T)) / 2 over the T steps
    of the run, from lr to 0; "constant" keeps lr; detect.lr_schedule reaches the spec."""
    def rates(schedule: str) -> list[float]:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
        sched = make_schedule(opt, TrainSpec(lr=0.01, lr_schedule=schedule), steps)
        out = []
        for _ in range(steps + 1):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    expected = [0.005 * (1 + np.cos(np.pi * t / steps)) for t in range(steps + 1)]
    np.testing.assert_allclose(rates("cosine"), expected, rtol=1e-9, atol=1e-15)
    assert rates("constant") == [0.01] * (steps + 1)
    assert train_spec(DetectConfig(lr_schedule="cosine"), seed=0).lr_schedule == "cosine"
    with pytest.raises(ValueError, match="lr_schedule must be"):
        make_schedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1),
                      TrainSpec(lr_schedule="linear"), 3)  # type: ignore[arg-type]


def test_cosine_detector_anneals_per_step(workspace: Path, capsys) -> None:
    """The training loop steps the schedule once per batch: each epoch's log line gives the
    rate the next step would use, lr (1 + cos(pi e / E)) / 2 after epoch e of E, 0 at the end;
    the same seed gives the same weights."""
    data = load(workspace)
    sets = [data.real_train, *data.fake_train]
    spec = replace(SPEC, epochs=3, lr_schedule="cosine")
    model = train_attributor(sets, spec, log=True)
    logged = [float(m) for m in re.findall(r"epoch \d/3: loss [\d.]+, next lr ([\d.e-]+)",
                                           capsys.readouterr().out)]
    expected = [spec.lr * (1 + np.cos(np.pi * e / 3)) / 2 for e in (1, 2, 3)]
    np.testing.assert_allclose(logged, expected, rtol=1e-6, atol=1e-12)
    again = train_attributor(sets, spec)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 again.state_dict().values(), strict=True))


def test_score_images_converts_other_sizes(workspace: Path, digits28) -> None:
    data = load(workspace)
    model = train_attributor([data.real_train, *data.fake_train], SPEC)
    from pipeline.detect import save_detector

    save_detector(workspace / "d.pt", model, 8, ["real", *FAMILIES], 0.5, (1, 28, 28))
    loaded, meta = load_detector(workspace / "d.pt")
    assert meta["image_shape"] == [1, 28, 28] and meta["config"]["classes"][0] == "real"
    with pytest.warns(UserWarning, match="resizing"):
        p = score_images(workspace / "d.pt", noise(5, 3, (16, 16, 3)))
    assert p.shape == (5,) and ((p >= 0) & (p <= 1)).all()
    with pytest.raises(UserError, match="detector not found"):
        score_images(workspace / "missing.pt", noise(2, 0))
    with pytest.raises(ValueError, match="classes must be"):
        save_detector(workspace / "e.pt", model, 8, ["dcgan", "real", "blobs"], 0.5, (1, 28, 28))


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
        load(workspace)
    return str(exc.value)


def test_mismatched_shapes_name_the_file(workspace: Path) -> None:
    write_fakes(workspace / "data" / "generated" / "blobs" / "detector_test.npz",
                noise(10, 2, (32, 32, 3)), 12)
    msg = _error(workspace)
    assert "blobs/detector_test.npz: images are (H, W, C) (32, 32, 3)" in msg
    assert "(28, 28, 1)" in msg


def test_too_few_real_validation_images(workspace: Path, digits28) -> None:
    images, labels = digits28
    save_split(workspace / "data" / "prepared" / "val.npz", images[240:241], labels[240:241],
               [str(i) for i in range(10)])
    msg = _error(workspace)
    assert "val.npz: 1 real val images are too few to balance against 2 families" in msg
    assert "raise data.val_fraction" in msg


def test_missing_and_overlapping_fakes(workspace: Path, digits_gan: DigitsGAN) -> None:
    root = workspace / "data" / "generated" / "dcgan"
    write_fakes(root / "detector_test.npz", digits_gan.fakes(10, seed=12), 101)  # val's seed
    assert "share a noise seed" in _error(workspace)
    (root / "detector_train.npz").unlink()
    assert "dcgan/detector_train.npz: not found" in _error(workspace)
    with pytest.raises(UserError, match="no families"):
        load(workspace, families=[])


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
    tracker.write_run_file(workspace / "models" / "dcgan" / "run.json")
    tracker.close()
    params = {"detect": CFG.model_dump(), "mlflow": mlflow_cfg.model_dump(),
              "zoo": {"dcgan": {}, "blobs": {"seed": 1}}}
    args = ["--real", "data/prepared", "--fake", "data/generated", "--discriminator",
            "models/dcgan/discriminator.pt", "--run", "models/dcgan/run.json", "--model",
            "models/detector.pt", "--metrics", "metrics/detector.json", "--roc",
            "metrics/roc.csv", "--plots", "metrics/detector"]
    res = run_stage("detect", *args, cwd=workspace, params=params)
    assert res.returncode == 0, res.stderr
    assert "spectrum" in res.stdout and "jpeg75" in res.stdout
    assert "calibrated threshold" in res.stdout and "blobs" in res.stdout
    metrics = json.loads((workspace / "metrics" / "detector.json").read_text())
    assert metrics["detector_auc"] > 0.9 and sorted(metrics["families"]) == sorted(FAMILIES)
    assert (workspace / "metrics" / "detector" / "roc.png").is_file()
    run = MlflowClient(mlflow_cfg.tracking_uri).get_run(tracker.run_id)
    assert run.data.metrics["detect/detector_auc"] == pytest.approx(metrics["detector_auc"])
    assert run.data.metrics["detect/detector_source_accuracy"] == pytest.approx(
        metrics["detector_source_accuracy"])
    logged = MlflowClient(mlflow_cfg.tracking_uri).list_artifacts(tracker.run_id, "detect")
    assert sorted(f.path for f in logged) == ["detect/detector.json", "detect/roc.csv",
                                              "detect/roc.png"]

    # A user error: one line naming the file, exit 1, and the previous outs stay.
    (workspace / "models" / "dcgan" / "discriminator.pt").write_bytes(b"junk")
    res = run_stage("detect", *args, cwd=workspace, params=params)
    assert res.returncode == 1
    assert res.stderr.startswith("error: models/dcgan/discriminator.pt: not a readable "
                                 "checkpoint")
    assert len(res.stderr.strip().splitlines()) == 1
    assert json.loads((workspace / "metrics" / "detector.json").read_text()) == metrics


def test_generate_then_detect(workspace: Path) -> None:
    """The generate stage's outs feed detect as they are (labels -1, noise seeds, layout)."""
    from pipeline.config import GenerateConfig
    from pipeline.generate import generate_splits

    gen = workspace / "models" / "dcgan" / "generator.pt"
    cfg = GenerateConfig(num_eval=4, num_detector_train=200, num_detector_val=20,
                         num_detector_test=60, batch_size=64)
    generate_splits(gen, workspace / "data" / "generated" / "dcgan", cfg, seed=0)
    data = load(workspace)
    assert ([len(f) for f in data.fake_train], [len(f) for f in data.fake_test]) == \
        ([120, 120], [50, 50])
    result = run_detect(data, workspace / "models" / "dcgan" / "discriminator.pt", CFG, 0,
                        torch.device("cpu"), log=False)
    assert result.metrics["detector_auc"] > 0.9  # the trained G's fakes are still caught


def test_a_conditional_discriminator_scores_unlabelled_images_by_its_most_real_class() -> None:
    """max_y D(x, y): a D whose logit is the class id (plus the image mean) gives the top class's
    logit for every image, whatever its true class."""

    class ClassLogit(torch.nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return y.float() + x.mean(dim=(1, 2, 3))

    images = noise(5, 0)
    x_mean = (images.astype(np.float64) / 127.5 - 1).mean(axis=(1, 2, 3))
    p = discriminator_scores(ClassLogit(), images, None, num_classes=4)
    assert np.allclose(p, 1 / (1 + np.exp(3 + x_mean)), atol=1e-6)  # sigmoid(-(3 + mean))
    labelled = discriminator_scores(ClassLogit(), images, np.zeros(5, np.int64))
    assert np.allclose(labelled, 1 / (1 + np.exp(x_mean)), atol=1e-6)


def test_a_conditional_default_model_keeps_its_discriminator_baseline(workspace: Path) -> None:
    """The default DCGAN is class-conditional while other families' fakes have no class: the
    baseline still exists (clean images, most-real class), and its perturbed AUCs are left out
    (a forward per class each) while the spectrum's stay."""
    from pipeline.models import build_models, make_checkpoint, save_checkpoint

    cfg = {"arch": "dcgan", "latent_dim": 8, "g_features": 8, "d_features": 8,
           "conditional": True, "embed_dim": 4, "g_upsample": "deconv", "d_norm": "batch"}
    torch.manual_seed(0)
    _, D = build_models(cfg, (1, 28, 28), 10)
    path = workspace / "models" / "dcgan" / "discriminator.pt"
    save_checkpoint(path, make_checkpoint(model_config=cfg, image_shape=(1, 28, 28),
                                          num_classes=10, discriminator=D))
    m = run_detect(load(workspace), path, CFG, 0, torch.device("cpu"), log=False).metrics
    assert 0.0 <= m["discriminator_auc"] <= 1.0 and "discriminator_eer" in m
    assert "discriminator_auc_jpeg75" not in m and "spectrum_auc_jpeg75" in m
