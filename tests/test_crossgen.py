"""pipeline.forensics: the perturbations on known images, calibrated scores on hand-computed
cases, and crossgen end to end on sklearn digits against three cheap, deterministic "families"
of fakes (real digits with different artefacts), with tiny detectors (width 8, one epoch)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from scipy.ndimage import gaussian_filter
from sklearn.metrics import roc_auc_score

from pipeline.detect.scores import balanced_accuracy, calibrate_threshold, score_set
from pipeline.detect.train import TrainSpec, augment, train_detector
from pipeline.errors import UserError
from pipeline.forensics.crossgen import CrossgenConfig, Split, run_crossgen
from pipeline.forensics.perturbations import blur, down_up, jpeg, robustness_levels
from pipeline.forensics.plots import write_plots

from conftest import torch_threads

SCORE_KEYS = {"auc", "ap", "accuracy", "calibrated_accuracy", "eer", "tpr_at_1fpr"}


@pytest.fixture(scope="module", autouse=True)
def one_thread_module():
    """The models here are tiny; one thread keeps a shared machine responsive."""
    with torch_threads(1):
        yield


def textured(n: int = 4, size: int = 28, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Uniform gray noise, the same in every channel (no colour: JPEG's 4:2:0 chroma
    subsampling would change per-channel noise even at q=100)."""
    gray = np.random.default_rng(seed).integers(0, 256, (n, size, size, 1), dtype=np.uint8)
    return np.repeat(gray, channels, axis=-1)


# --- perturbations on known images -------------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_q100_keeps_a_flat_image_and_q30_changes_a_textured_one(channels):
    flat = np.full((2, 28, 28, channels), 130, dtype=np.uint8)
    out = jpeg(flat, 100)
    assert out.shape == flat.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - flat).max() <= 1
    tex = textured(channels=channels)
    assert np.abs(jpeg(tex, 30).astype(int) - tex).mean() > 20  # uniform noise: ~75 on average
    assert np.abs(jpeg(tex, 100).astype(int) - tex).mean() < \
        np.abs(jpeg(tex, 30).astype(int) - tex).mean() / 3


@pytest.mark.parametrize("channels", [1, 3])
def test_blur_sigma_zero_is_the_identity(channels):
    tex = textured(channels=channels)
    out = blur(tex, 0)
    assert np.array_equal(out, tex) and out is not tex


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_blur_spreads_a_bright_pixel_as_a_gaussian(sigma):
    img = np.zeros((1, 33, 33, 3), dtype=np.uint8)
    img[0, 16, 16] = 255
    out = blur(img, sigma).astype(float)
    # Closed form: scipy's kernel is the sampled Gaussian, truncated at 4 sigma, normalised.
    r = int(4 * sigma + 0.5)
    x = np.arange(-r, r + 1)
    g = np.exp(-x**2 / (2 * sigma**2))
    g /= g.sum()
    expected = np.zeros((33, 33))
    expected[16 - r:16 + r + 1, 16 - r:16 + r + 1] = 255 * np.outer(g, g)
    for ch in range(3):
        assert np.abs(out[0, :, :, ch] - expected).max() <= 0.5 + 1e-9  # uint8 rounding only
    reference = gaussian_filter(img[0, :, :, 0].astype(float), sigma, mode="reflect")
    assert np.abs(out[0, :, :, 0] - reference).max() <= 0.5 + 1e-9
    assert out[0, 16, 16, 0] == round(255 * g[r] ** 2)  # the peak falls as 1 / (2 pi sigma^2)


@pytest.mark.parametrize("channels", [1, 3])
def test_down_up_keeps_a_constant_image_and_loses_a_checkerboard(channels):
    const = np.full((2, 28, 28, channels), 77, dtype=np.uint8)
    assert np.array_equal(down_up(const, 0.5), const)
    yy, xx = np.mgrid[:28, :28]
    board = np.repeat(((yy + xx) % 2 * 255).astype(np.uint8)[None, :, :, None], channels, -1)
    out = down_up(board, 0.5).astype(float)
    assert out.shape == board.shape
    assert board.std() > 120
    assert out[:, 2:-2, 2:-2].std() < 2 and abs(out.mean() - 127.5) < 2  # flat mid-gray


def test_robustness_levels_are_the_issue_sweep():
    levels = [(kind, level) for kind, level, _ in robustness_levels()]
    assert levels == [("jpeg", 100), ("jpeg", 90), ("jpeg", 75), ("jpeg", 50), ("jpeg", 30),
                      ("blur", 0.0), ("blur", 0.5), ("blur", 1.0), ("blur", 2.0),
                      ("blur", 3.0), ("down_up", 0.5)]
    tex = textured()
    for _, _, transform in robustness_levels():
        assert transform(tex).shape == tex.shape


# --- scores ------------------------------------------------------------------------------------

def test_calibrated_threshold_maximises_balanced_accuracy_on_a_hand_computed_case():
    # 3 reals, 4 fakes. Midpoint thresholds and their balanced accuracy (TPR + TNR) / 2:
    # 0.25 -> (4/4 + 2/3)/2 = .833; 0.325 -> (3/4 + 2/3)/2 = .708; 0.525 -> (3/4 + 3/3)/2 = .875;
    # 0.75 -> (2/4 + 1)/2 = .75; ... so 0.525 wins.
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.35, 0.3, 0.7, 0.8, 0.9])
    thr = calibrate_threshold(labels, scores)
    assert thr == pytest.approx(0.525)
    assert balanced_accuracy(labels, scores, thr) == pytest.approx(0.875)
    # On the test split: at 0.5 two reals (0.5, 0.6) are called fake; at 0.525 only 0.6 is.
    out = score_set(np.array([0, 0, 1, 1]), np.array([0.5, 0.6, 0.55, 0.9]), thr)
    assert out["accuracy"] == pytest.approx(0.5)
    assert out["calibrated_accuracy"] == pytest.approx(0.75)
    assert out["calibrated_threshold"] == pytest.approx(0.525)


def test_eer_and_tpr_at_1fpr_on_a_closed_form_case():
    # Reals score 0..99, fakes 49.5..148.5: half the fakes beat every real.
    labels = np.r_[np.zeros(100), np.ones(100)]
    scores = np.r_[np.arange(100.0), 49.5 + np.arange(100.0)]
    out = score_set(labels, scores / 200, threshold=0.5)
    # FPR = FNR = 25 % at a threshold of 74.5 (reals 75..99 above, fakes 49.5..73.5 below).
    assert out["eer"] == pytest.approx(0.25)
    # At most one real (99) above the threshold: fakes >= 98.5 are caught, 51 of them.
    assert out["tpr_at_1fpr"] == pytest.approx(0.51)
    assert out["auc"] == pytest.approx(roc_auc_score(labels, scores))
    assert set(out) == SCORE_KEYS | {"calibrated_threshold"}


# --- training ----------------------------------------------------------------------------------

def test_augmentation_is_seeded_and_p_controls_it():
    tex = textured(n=32)
    assert np.array_equal(augment(tex, TrainSpec(aug_prob=0.0), np.random.default_rng(0)), tex)
    a = augment(tex, TrainSpec(aug_prob=0.5), np.random.default_rng(0))
    b = augment(tex, TrainSpec(aug_prob=0.5), np.random.default_rng(0))
    assert np.array_equal(a, b)
    changed = (a != tex).any(axis=(1, 2, 3))
    assert 0 < changed.sum() < 32  # P(neither) = 1/4: some images untouched, most changed
    assert (augment(tex, TrainSpec(aug_prob=1.0), np.random.default_rng(1)) != tex).any(
        axis=(1, 2, 3)).all()


def test_detector_training_is_deterministic_and_leaves_the_global_rng_alone():
    real, fake = textured(16, seed=1), textured(16, seed=2)
    spec = TrainSpec(epochs=1, batch_size=8, width=4, aug_prob=0.5, seed=3)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    m1 = train_detector(real, fake, spec)
    assert torch.equal(torch.get_rng_state(), state)
    m2 = train_detector(real, fake, spec)
    for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        assert torch.equal(v1, v2), k


# --- crossgen end to end -----------------------------------------------------------------------

def digits_28() -> np.ndarray:
    """sklearn's 1797 digits, bilinearly upscaled to uint8 (N, 28, 28, 1)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    small = np.round(load_digits().images * 255 / 16).astype(np.uint8)
    big = [np.asarray(Image.fromarray(im).resize((28, 28), Image.Resampling.BILINEAR))
           for im in small]
    return np.stack(big)[..., None]


def checker(images: np.ndarray) -> np.ndarray:
    """A +-16 one-pixel checkerboard: the transposed-convolution artefact, exaggerated."""
    yy, xx = np.mgrid[:28, :28]
    pattern = np.where((yy + xx) % 2 == 0, 16, -16)[None, :, :, None]
    return np.clip(images.astype(int) + pattern, 0, 255).astype(np.uint8)


def blur_noise(images: np.ndarray) -> np.ndarray:
    """Over-smooth, then sensor-like noise (std 10): a blurry, grainy generator."""
    noise = np.random.default_rng(5).normal(0, 10, images.shape)
    return np.clip(np.round(blur(images, 1.0) + noise), 0, 255).astype(np.uint8)


def shuffled_patches(images: np.ndarray) -> np.ndarray:
    """The 4 x 4 grid of 7-px patches of each image, shuffled: right texture, wrong layout."""
    rng = np.random.default_rng(6)
    out = np.empty_like(images)
    for i, img in enumerate(images):
        tiles = [img[r:r + 7, c:c + 7] for r in range(0, 28, 7) for c in range(0, 28, 7)]
        order = rng.permutation(16)
        for k, t in enumerate(order):
            r, c = divmod(k, 4)
            out[i, 7 * r:7 * r + 7, 7 * c:7 * c + 7] = tiles[t]
    return out


def split(images: np.ndarray) -> Split:
    return Split(images[:480], images[480:640], images[640:880])


@pytest.fixture(scope="module")
def crossgen_result():
    images = digits_28()
    real_pool, fake_pool = images[:880], images[880:1760]  # fakes never reuse a real image
    fakes = {"checker": split(checker(fake_pool)), "blur-noise": split(blur_noise(fake_pool)),
             "patches": split(shuffled_patches(fake_pool))}
    spec = TrainSpec(epochs=1, batch_size=32, lr=2e-3, width=8, seed=0)
    config = CrossgenConfig(recipe="probe", compare=("cnn",), detector=spec,
                            attributor=replace_epochs(spec, 2))
    return run_crossgen(split(real_pool), fakes, config, featurenet=pooled)


def pooled(images: np.ndarray) -> np.ndarray:
    """A fixed stand-in for the FeatureNet: 4 x 4 average-pooled pixels (49 features)."""
    x = images[..., 0].astype(np.float32).reshape(len(images), 7, 4, 7, 4)
    return x.mean(axis=(2, 4)).reshape(len(images), -1)


def replace_epochs(spec: TrainSpec, epochs: int) -> TrainSpec:
    from dataclasses import replace

    return replace(spec, epochs=epochs)


def test_crossgen_has_every_key_and_is_json(crossgen_result):
    r = crossgen_result
    assert set(r) == {"matrix", "leave_one_out", "attribution", "robustness", "sizes", "params"}
    families = ["checker", "blur-noise", "patches"]
    assert r["params"]["families"] == families
    assert list(r["matrix"]) == families
    for row in r["matrix"].values():
        assert list(row) == families
        for cell in row.values():
            assert set(cell) >= SCORE_KEYS
    loo = r["leave_one_out"]
    assert set(loo) == {"detector", "per_family", "mean_ap", "mean_calibrated_accuracy",
                        "compare"}
    assert loo["detector"] == "probe" and list(loo["compare"]) == ["cnn"]
    assert set(loo["compare"]["cnn"]) == {"per_family", "mean_ap", "mean_calibrated_accuracy"}
    for block in (loo, loo["compare"]["cnn"]):
        assert list(block["per_family"]) == families
        for cell in block["per_family"].values():
            assert set(cell) >= SCORE_KEYS
    assert r["attribution"]["attributor"] == "probe"
    assert r["params"]["recipe"] == "probe" and r["params"]["compare"] == ["cnn"]
    assert json.loads(json.dumps(r)) == r
    assert r["sizes"]["matrix_test"] == {f: [240, 240] for f in families}
    assert r["sizes"]["robustness_test"] == [240, 240]


def test_a_detector_catches_the_family_it_trained_on(crossgen_result):
    m = crossgen_result["matrix"]
    for family in m:
        assert m[family][family]["auc"] > 0.85, (family, m[family][family])
        assert m[family][family]["ap"] > 0.85, (family, m[family][family])
        assert m[family][family]["calibrated_accuracy"] > 0.7, (family, m[family][family])


@pytest.mark.parametrize("recipe", ["probe", "cnn"])
def test_leave_one_out_means_are_the_means_of_its_cells(crossgen_result, recipe):
    loo = crossgen_result["leave_one_out"]
    loo = loo if recipe == "probe" else loo["compare"][recipe]
    cells = loo["per_family"].values()
    assert loo["mean_ap"] == pytest.approx(np.mean([c["ap"] for c in cells]))
    assert loo["mean_calibrated_accuracy"] == pytest.approx(
        np.mean([c["calibrated_accuracy"] for c in cells]))
    for c in cells:
        assert 0 <= c["eer"] <= 1 and 0 <= c["tpr_at_1fpr"] <= 1


def test_a_histogram_probe_catches_an_unseen_forger_that_shares_the_saturation_cue():
    """Real digits pile up on exact 0 (background). Three "forgers" whose darkest output is 2,
    4 or 6 (a tanh that never quite reaches -1): a probe on the pixel-value histogram, trained
    against two, catches the third; the same probe cannot separate real from real."""
    from sklearn.metrics import roc_auc_score as auc

    from pipeline.forensics.probe import Featurizer, train_probe

    images = digits_28()
    forgers = {lo: (lambda x, lo=lo: np.round(lo + x * (255 - lo) / 255).astype(np.uint8))
               for lo in (2, 4, 6)}
    real_train, real_test, pool = images[:500], images[500:800], images[800:1700]
    featurize = Featurizer(("histogram",))
    labels = np.r_[np.zeros(300), np.ones(300)]
    for unseen in forgers:
        seen = [f for f in forgers if f != unseen]
        fakes = np.concatenate([forgers[f](pool[250 * i:250 * (i + 1)])
                                for i, f in enumerate(seen)])
        probe = train_probe([real_train, fakes], featurize)
        scores = np.r_[probe(real_test), probe(forgers[unseen](pool[600:900]))]
        assert auc(labels, scores) > 0.95, unseen
    real_vs_real = train_probe([images[:400], images[400:800]], featurize)
    assert abs(auc(np.r_[np.zeros(400), np.ones(400)],
                   real_vs_real(images[800:1600])) - 0.5) < 0.1


def test_a_cooccurrence_probe_catches_an_unseen_texture_the_histogram_misses():
    """Four "forgers" that each leave their own local texture on real digits: grain (+-2 grey
    levels), blocks (nearest-neighbour 2x up-sampling), a +2 checkerboard, coarse steps of 4.
    A probe on neighbouring-pixel difference pairs, trained against three, catches the fourth;
    the pixel-value histogram, which the blocks do not change, misses them; real vs real stays
    at chance."""
    from sklearn.metrics import roc_auc_score as auc

    from pipeline.forensics.probe import Featurizer, train_probe

    images = digits_28()
    rng = np.random.default_rng(0)

    def grain(x: np.ndarray) -> np.ndarray:
        return np.clip(x.astype(int) + rng.integers(-2, 3, x.shape), 0, 255).astype(np.uint8)

    def checkerboard(x: np.ndarray) -> np.ndarray:
        y = x.astype(int)
        y[:, ::2, ::2] += 2
        y[:, 1::2, 1::2] += 2
        return np.clip(y, 0, 255).astype(np.uint8)

    forgers = {"grain": grain, "blocks": lambda x: x[:, ::2, ::2].repeat(2, 1).repeat(2, 2),
               "checkerboard": checkerboard, "steps": lambda x: x // 4 * 4}
    real_train, real_test, pool = images[:500], images[500:800], images[800:1700]
    labels = np.r_[np.zeros(300), np.ones(300)]

    def unseen_auc(features: tuple[str, ...], unseen: str) -> float:
        seen = [f for f in forgers if f != unseen]
        fakes = np.concatenate([forgers[f](pool[200 * i:200 * (i + 1)])
                                for i, f in enumerate(seen)])
        probe = train_probe([real_train, fakes], Featurizer(features))
        return auc(labels, np.r_[probe(real_test), probe(forgers[unseen](pool[600:900]))])

    for unseen in ("blocks", "checkerboard", "steps"):
        assert unseen_auc(("cooccurrence",), unseen) > 0.95, unseen
    assert unseen_auc(("cooccurrence",), "grain") > 0.7  # the hardest: plain noise
    assert unseen_auc(("histogram",), "blocks") < 0.7
    real_vs_real = train_probe([images[:400], images[400:800]], Featurizer(("cooccurrence",)))
    assert abs(auc(np.r_[np.zeros(400), np.ones(400)],
                   real_vs_real(images[800:1600])) - 0.5) < 0.1


def test_crossgen_rejects_an_unknown_recipe_and_a_probe_without_its_featurenet():
    x = digits_28()[:40]
    two = {"a": Split(x, x, x), "b": Split(x, x, x)}
    with pytest.raises(UserError, match=r"distinct names from \['probe', 'cnn'\]"):
        run_crossgen(Split(x, x, x), two, CrossgenConfig(recipe="svm"))
    with pytest.raises(UserError, match="dvc repro featurenet"):
        run_crossgen(Split(x, x, x), two, CrossgenConfig())  # featurenet features, none given


def test_attribution_confusion_counts_every_test_image(crossgen_result):
    att = crossgen_result["attribution"]
    assert att["classes"] == ["real", "checker", "blur-noise", "patches"]
    confusion = np.array(att["confusion"])
    assert confusion.shape == (4, 4)
    assert confusion.sum() == 4 * 240 == 4 * att["n_test_per_class"]
    assert (confusion.sum(axis=1) == 240).all()  # rows = true class, balanced
    assert att["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
    assert att["accuracy"] > 0.6  # chance is 0.25


def test_robustness_table_has_every_level(crossgen_result):
    rob = crossgen_result["robustness"]
    assert [r["level"] for r in rob["jpeg"]] == [100, 90, 75, 50, 30]
    assert [r["level"] for r in rob["blur"]] == [0.0, 0.5, 1.0, 2.0, 3.0]
    assert [r["level"] for r in rob["down_up"]] == [0.5]
    for rows in rob.values():
        for r in rows:
            assert 0 <= r["ap"] <= 1 and 0 <= r["auc"] <= 1
    # Unperturbed (q 100 ~ sigma 0), the all-family detector separates real from fake.
    assert rob["blur"][0]["auc"] > 0.8


def test_plots_are_written(crossgen_result, tmp_path):
    paths = write_plots(crossgen_result, tmp_path)
    assert [p.name for p in paths] == ["matrix_auc.png", "matrix_ap.png", "attribution.png",
                                       "robustness.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_crossgen_needs_two_families():
    x = textured(8)
    with pytest.raises(UserError, match="at least two families"):
        run_crossgen(Split(x, x, x), {"only": Split(x, x, x)})


# --- the crossgen stage, end to end ------------------------------------------------------------

def fingerprint(images: np.ndarray, seed: int) -> np.ndarray:
    """A fixed, seed-dependent +-8 pattern on every image: two "generators" of one recipe that
    differ only in their seed (Yu et al. 2019: seeds leave fingerprints of their own)."""
    pattern = np.random.default_rng(seed).choice([-8, 8], size=(1, 28, 28, 1))
    return np.clip(images.astype(int) + pattern, 0, 255).astype(np.uint8)


def test_crossgen_stage_end_to_end(tmp_path, run_stage, monkeypatch):
    """stages/crossgen.py on files laid out as the pipeline writes them: metrics/crossgen.json
    with every key (the seed pair's attribution too), the plots, and an MLflow run of its own
    that links each family's model run."""
    from mlflow.tracking import MlflowClient

    from pipeline.config import MlflowConfig
    from pipeline.data.arrays import save_split
    from pipeline.detect import save_detector
    from pipeline.detect.train import train_attributor
    from pipeline.tracking import Tracker

    images = digits_28()
    names = [str(i) for i in range(10)]
    labels = np.zeros(len(images), dtype=np.int64)
    prepared = tmp_path / "data" / "prepared"
    for name, rows in (("train", slice(0, 400)), ("val", slice(400, 500)),
                       ("test", slice(500, 700))):
        save_split(prepared / f"{name}.npz", images[rows], labels[rows], names)
    pool = images[700:1300]  # fakes never reuse a real image
    makers = {"dcgan": shuffled_patches, "checker": checker, "blur-noise": blur_noise,
              "fp-s1": lambda x: fingerprint(x, 1), "fp-s2": lambda x: fingerprint(x, 2)}
    monkeypatch.chdir(tmp_path)  # the sqlite store keeps artifacts in ./mlartifacts
    mlflow_cfg = MlflowConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                              experiment="cg")
    sets = {}
    for k, (family, make) in enumerate(makers.items()):
        fakes = make(pool)
        sets[family] = fakes
        for j, (split_name, rows) in enumerate((("train", slice(0, 300)), ("val", slice(300, 400)),
                                                ("test", slice(400, 600)))):
            path = tmp_path / "data" / "generated" / family / f"detector_{split_name}.npz"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, images=fakes[rows], labels=np.full(rows.stop - rows.start, -1),
                     noise_seed=np.int64(10 * k + j))
        tracker = Tracker.start(mlflow_cfg, f"model-{family}", {})
        tracker.write_run_file(tmp_path / "models" / family / "run.json")
        tracker.close()
    spec = TrainSpec(epochs=1, batch_size=32, lr=2e-3, width=8)
    shipped = train_attributor([images[:400], *(s[:80] for s in sets.values())], spec)
    save_detector(tmp_path / "models" / "detector.pt", shipped, 8, ["real", *makers], 0.5,
                  (1, 28, 28))
    params = {"mlflow": mlflow_cfg.model_dump(), "detect": {"device": "cpu"},
              "zoo": {"dcgan": {}, "checker": {"seed": 3}, "blur-noise": {"seed": 4},
                      "fp-s1": {"seed": 1}, "fp-s2": {"seed": 2}},
              "crossgen": {"seed_pair": ["fp-s1", "fp-s2"], "num_train": 300, "num_val": 100,
                           "num_test": 200, "epochs": 2, "batch_size": 32, "lr": 0.002,
                           "width": 8, "detector": "cnn", "compare": ["probe"],
                           "probe_features": ["histogram", "spectrum"], "attributor": "cnn"}}
    args = ["--real", "data/prepared", "--fake", "data/generated", "--detector",
            "models/detector.pt", "--featurenet", "models/featurenet.pt", "--models", "models",
            "--metrics", "metrics/crossgen.json", "--plots", "metrics/crossgen"]
    done = run_stage("crossgen", *args, cwd=tmp_path, params=params)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "metrics" / "crossgen.json").read_text())
    assert set(result) == {"matrix", "leave_one_out", "attribution", "robustness", "sizes",
                           "params", "model_runs", "seconds"}
    zoo = list(yaml.safe_load((tmp_path / "params.yaml").read_text())["zoo"])  # file order
    families = [f for f in zoo if not f.startswith("fp-")]  # the zoo minus the seed pair
    assert sorted(families) == ["blur-noise", "checker", "dcgan"]
    assert list(result["matrix"]) == families
    assert set(result["leave_one_out"]["per_family"]) == set(families)
    assert result["leave_one_out"]["detector"] == "cnn"
    assert set(result["leave_one_out"]["compare"]["probe"]["per_family"]) == set(families)
    assert result["attribution"]["attributor"] == "cnn"
    pair = result["attribution"]["seed_pair"]
    assert pair["classes"] == ["real", "fp-s1", "fp-s2"]
    assert pair["fake_accuracy"] > 0.9  # a fixed pattern per seed: far above chance (0.5)
    confusion = np.array(pair["confusion"])
    assert pair["fake_accuracy"] == pytest.approx(
        (confusion[1, 1] + confusion[2, 2]) / confusion[1:].sum())  # called real: wrong
    assert pair["seed_accuracy_given_fake"] >= pair["fake_accuracy"]
    assert sorted(result["model_runs"]) == sorted(makers)
    assert sorted(p.name for p in (tmp_path / "metrics" / "crossgen").iterdir()) == [
        "attribution.png", "attribution_seed_pair.png", "matrix_ap.png", "matrix_auc.png",
        "robustness.png"]
    assert "leave-one-out mean AP" in done.stdout

    client = MlflowClient(mlflow_cfg.tracking_uri)
    exp = client.get_experiment_by_name("cg")
    (run,) = client.search_runs([exp.experiment_id], "tags.`gan-forensics.stage` = 'crossgen'")
    assert run.info.run_name == "zoo@crossgen" and run.info.status == "FINISHED"
    for family in makers:
        linked = run.data.tags[f"zoo.{family}.run_id"]
        assert linked == json.loads((tmp_path / "models" / family / "run.json").read_text())[
            "run_id"]
    assert run.data.metrics["crossgen/loo_mean_ap"] == pytest.approx(
        result["leave_one_out"]["mean_ap"])
    assert run.data.metrics["crossgen/loo_mean_ap_probe"] == pytest.approx(
        result["leave_one_out"]["compare"]["probe"]["mean_ap"])
    assert "The same with probe detectors: mean AP" in run.data.tags["mlflow.note.content"]
    assert run.data.metrics["crossgen/seed_pair_fake_accuracy"] == pytest.approx(
        pair["fake_accuracy"])
    assert run.data.tags["mlflow.note.content"].startswith("**Crossgen**")
    logged = {f.path for f in client.list_artifacts(run.info.run_id, "crossgen")}
    assert {"crossgen/crossgen.json", "crossgen/robustness.png"} <= logged

    # A family the zoo does not have: one line listing the valid ones, nothing written.
    before = (tmp_path / "metrics" / "crossgen.json").read_bytes()
    params["crossgen"]["families"] = ["dcgan", "stylegan"]
    bad = run_stage("crossgen", *args, cwd=tmp_path, params=params)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1
    assert f"crossgen.families: unknown family 'stylegan' (valid: {', '.join(zoo)})" in bad.stderr
    assert (tmp_path / "metrics" / "crossgen.json").read_bytes() == before

    # A probe on FeatureNet features, and no FeatureNet: one line saying how to make it.
    params["crossgen"]["families"] = None
    params["crossgen"]["attributor"] = "probe"  # its default features include featurenet
    bad = run_stage("crossgen", *args, cwd=tmp_path, params=params)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "dvc repro featurenet" in bad.stderr
    assert (tmp_path / "metrics" / "crossgen.json").read_bytes() == before
