"""pipeline.privacy: attack metrics against closed forms and independent references, the
audit against generators whose leakage is known (one replays its training images, one emits
held-out images), the memorisation view, TSTR end to end on sklearn digits, and the privacy
params' one-line errors."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy.stats import norm
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

from pipeline.config import parse_params
from pipeline.errors import UserError
from pipeline.privacy.attacks import bootstrap_auc, nearest_distance, report, tpr_at_fpr
from pipeline.privacy.audit import AuditedModel, audit_family, draw_queries, memorisation
from pipeline.privacy.tstr import TstrSpec, trtr, tstr
from pipeline.train.data import member_indices

from conftest import torch_threads


@pytest.fixture(scope="module", autouse=True)
def one_thread_module():
    """The models here are tiny; one thread keeps a shared machine responsive."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def digits():
    """sklearn digits as uint8 (N, 28, 28, 1), labels, in a seeded random order (the file is
    ordered by writer); split 1000 / the rest."""
    d = load_digits()
    order = np.random.default_rng(0).permutation(len(d.target))
    img, target = (d.images[order] / 16 * 255).astype(np.uint8), d.target[order]
    img = np.kron(img, np.ones((3, 3), np.uint8))  # 24 px
    img = np.pad(img, ((0, 0), (2, 2), (2, 2)))[..., None]  # 28 px
    return (img[:1000], target[:1000].astype(np.int64)), (img[1000:], target[1000:])


# --- attack metrics ---------------------------------------------------------------------------

def test_nearest_distance_matches_brute_force():
    rng = np.random.default_rng(0)
    q, s = rng.normal(size=(37, 5)), rng.normal(size=(53, 5))
    brute = np.sqrt(((q[:, None] - s[None]) ** 2).sum(-1)).min(1)
    assert np.allclose(nearest_distance(q, s, batch_size=8), brute, atol=1e-4)
    assert np.allclose(nearest_distance(s[:4], s), 0, atol=1e-3)  # a sample's own distance


def test_tpr_at_fpr_on_a_hand_computed_ranking():
    # scores high to low: m m n m n n n n n n  (3 members, 7 non-members)
    labels = np.array([1, 1, 0, 1, 0, 0, 0, 0, 0, 0])
    scores = np.arange(10, 0, -1, dtype=float)
    assert tpr_at_fpr(labels, scores, 0.0) == pytest.approx(2 / 3)  # before the first non-member
    assert tpr_at_fpr(labels, scores, 1 / 7) == pytest.approx(1.0)
    assert tpr_at_fpr(labels, scores, 0.1) == pytest.approx(2 / 3)


def test_report_of_separated_and_of_identical_scores():
    sep = report(np.arange(100, 200.0), np.arange(100.0), rounds=50)
    assert sep["auc"] == 1.0 and sep["auc_ci95"] == [1.0, 1.0]
    assert sep["tpr_at_1pct_fpr"] == 1.0 and sep["tpr_at_0.1pct_fpr"] == 1.0
    same = report(np.zeros(50), np.zeros(50), rounds=50)
    assert same["auc"] == 0.5 and same["tpr_at_1pct_fpr"] == 0.0


def test_bootstrap_interval_agrees_with_a_plain_resampling_loop():
    rng = np.random.default_rng(1)
    m, n = rng.normal(0.4, 1, 400), rng.normal(0, 1, 300)
    labels = np.r_[np.ones(400), np.zeros(300)]
    ref = [roc_auc_score(labels, np.r_[m[rng.integers(0, 400, 400)],
                                       n[rng.integers(0, 300, 300)]]) for _ in range(1000)]
    lo, hi = bootstrap_auc(m, n, 1000, seed=2)
    assert abs(lo - np.percentile(ref, 2.5)) < 0.012 and abs(hi - np.percentile(ref, 97.5)) < 0.012


def test_bootstrap_interval_covers_the_true_auc():
    """Binormal scores: the true AUC is Phi(mu / sqrt 2). A 95 % interval must cover it in
    about 95 % of repeated experiments (>= 85 % of 60: a binomial tail of ~1e-3)."""
    mu, true_auc, covered = 0.5, norm.cdf(0.5 / np.sqrt(2)), 0
    for rep in range(60):
        rng = np.random.default_rng(100 + rep)
        lo, hi = bootstrap_auc(rng.normal(mu, 1, 300), rng.normal(0, 1, 300), 400, seed=rep)
        covered += lo <= true_auc <= hi
    assert covered >= 51


# --- the audit against generators of known leakage --------------------------------------------

def _flat(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float32) / 255


def _model(generated: np.ndarray, n_train: int) -> AuditedModel:
    return AuditedModel("g", generated, None, False, n_train)


def test_attack_on_a_generator_that_replays_its_training_images_reaches_auc_one(digits):
    train, test = digits
    members = member_indices(len(train[0]), 300, seed=0)
    queries = draw_queries(train, test, members, 150, seed=0)
    leaky = _model(train[0][members], len(members))  # emits exactly its training images
    table, scores = audit_family(queries, leaky, None, _flat, 200, 0)
    for name in ("black_box_pixel", "black_box_feature"):
        assert table["attacks"][name]["auc"] > 0.99
        assert table["attacks"][name]["tpr_at_1pct_fpr"] > 0.95
    pool = train[0][members][:200]  # every sample shown has its source in the pool
    mem, columns = memorisation(pool, pool, test[0][:200], 4)
    assert mem["median_nn_train"] == 0 and mem["fraction_closer_to_train"] > 0.95
    assert np.array_equal(columns[0], columns[1])  # each shown sample IS its training neighbour


def test_attack_on_a_generator_that_emits_held_out_images_is_at_chance(digits):
    train, test = digits
    members = member_indices(len(train[0]), 300, seed=0)
    queries = draw_queries(train, (test[0][:300], test[1][:300]), members, 150, seed=0)
    held_out = _model(test[0][300:], len(members))  # real images G never saw, nor the queries
    table, _ = audit_family(queries, held_out, None, _flat, 400, 0)
    for name in ("black_box_pixel", "black_box_feature"):
        lo, hi = table["attacks"][name]["auc_ci95"]
        assert lo < 0.5 < hi and abs(table["attacks"][name]["auc"] - 0.5) < 0.1


def test_calibration_subtracts_the_reference_and_a_vae_has_no_white_box(digits):
    train, test = digits
    members = member_indices(len(train[0]), 300, seed=0)
    queries = draw_queries(train, test, members, 100, seed=0)
    target, ref = _model(train[0][members], 300), _model(test[0][300:], 300)
    table, scores = audit_family(queries, target, ref, _flat, 50, 0)
    assert set(table["attacks"]) == {"black_box_pixel", "black_box_pixel_calibrated",
                                     "black_box_feature", "black_box_feature_calibrated"}
    ref_only = -nearest_distance(queries.images, ref.generated)
    assert np.allclose(scores["black_box_pixel_calibrated"],
                       scores["black_box_pixel"] - ref_only)


def test_queries_are_members_of_the_subset_and_held_out_images():
    train = (np.arange(50, dtype=np.uint8).reshape(50, 1, 1, 1), np.zeros(50, np.int64))
    test = (np.full((20, 1, 1, 1), 200, np.uint8), np.ones(20, np.int64))
    members = member_indices(50, 10, seed=3)
    q = draw_queries(train, test, members, 10, seed=0)
    assert set(q.images[q.is_member].ravel()) == set(members)  # all 10 of the subset
    assert (q.images[~q.is_member] == 200).all() and q.is_member.sum() == 10
    with pytest.raises(UserError, match="privacy.num_members"):
        draw_queries(train, test, members, 11, seed=0)


# --- TSTR ---------------------------------------------------------------------------------------

class ReplayGenerator(torch.nn.Module):
    """A 'conditional G' that returns a real image of the requested class (or, `shuffle`, of
    another class): TSTR must then match TRTR (or fall to chance)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, shuffle: bool = False) -> None:
        super().__init__()
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        self.by_class = [np.flatnonzero(labels == c) for c in range(10)]
        self.shuffle = shuffle

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        out = []
        for zi, c in zip(z, labels.tolist(), strict=True):
            pool = self.by_class[(c + 3) % 10 if self.shuffle else c]
            out.append(self.images[pool[int(abs(zi[0].item()) * 1e6) % len(pool)]])
        return torch.stack(out)


META = {"model_config": {"conditional": True, "latent_dim": 4}, "num_classes": 10}


def test_tstr_of_a_replaying_generator_matches_trtr_and_shuffled_classes_fail(digits):
    train, test = digits
    spec = TstrSpec(num_train=600, epochs=3, batch_size=64, lr=2e-3, width=8, seed=0)
    baseline = trtr(train, test, 10, spec, "cpu")
    assert baseline > 0.8  # digits are easy
    good = tstr(ReplayGenerator(*train), META, test, spec, "cpu")
    bad = tstr(ReplayGenerator(*train, shuffle=True), META, test, spec, "cpu")
    assert good > 0.9 * baseline
    assert bad < 0.2  # a class-shuffled G teaches a permutation: below chance on real labels


def test_tstr_refuses_an_unconditional_generator(digits):
    _, test = digits
    meta = {"model_config": {"conditional": False, "latent_dim": 4}, "num_classes": 10}
    with pytest.raises(UserError, match="privacy.tstr: G is not class-conditional"):
        tstr(ReplayGenerator(*digits[0]), meta, test,
             TstrSpec(10, 1, 8, 1e-3, 8, 0), "cpu")


def test_tstr_spec_takes_the_privacy_params_and_caps_at_the_real_images():
    raw = {"seed": 7, "privacy": {"tstr_num_train": 500, "tstr_epochs": 2,
                                  "tstr_batch_size": 32, "tstr_lr": 0.002, "tstr_width": 16}}
    params = parse_params(raw)
    assert TstrSpec.from_params(params, 10_000) == TstrSpec(500, 2, 32, 0.002, 16, 7)
    assert TstrSpec.from_params(params, 300).num_train == 300  # as many as the real images


def test_size_curve_draws_every_attack_of_every_family(tmp_path, monkeypatch):
    from PIL import Image

    from pipeline.privacy import plots
    from pipeline.privacy.plots import size_curve

    drawn = []  # what each axis shows, read from the figure before it is saved and closed
    save = plots._save

    def keep(fig, path):
        drawn.extend((ax.get_legend_handles_labels()[1],
                      [t.get_text() for t in ax.get_xticklabels()]) for ax in fig.axes)
        save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)

    def attack(auc):
        return {"auc": auc, "auc_ci95": [auc - 0.05, auc + 0.05], "tpr_at_1pct_fpr": auc / 20}

    families = {name: {"num_train_images": n, "num_members": min(n, 2000),
                       "num_nonmembers": min(n, 2000),
                       "attacks": {"white_box_d": attack(a),
                                   "black_box_pixel_calibrated": attack(b)}}
                for name, n, a, b in (("big", 50_000, 0.5, 0.51), ("small", 256, 0.7, 0.55))}
    size_curve(families, tmp_path / "size_curve.png")
    with Image.open(tmp_path / "size_curve.png") as img:
        assert img.format == "PNG" and img.size == (1320, 506)  # 12 x 4.6 in at 110 dpi
        assert np.asarray(img.convert("L")).std() > 10  # drawn, not blank
    assert list(tmp_path.iterdir()) == [tmp_path / "size_curve.png"]  # written atomically
    ticks = ["small\nn = 256\nN = 256", "big\nn = 50,000\nN = 2,000"]  # sorted by n, with N
    assert [t for _, t in drawn] == [ticks, ticks]
    assert sorted(drawn[0][0]) == ["black_box_pixel_calibrated", "white_box_d"]  # every attack


# --- params -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load(Path("params.yaml").read_text())


@pytest.mark.parametrize("change, message", [
    (lambda p: p["privacy"].update(families=["nope"]),
     "privacy.families: unknown family 'nope' (valid: dcgan, "),
    (lambda p: p["privacy"].update(reference="dcgan-seed1"),
     "privacy.reference: dcgan-seed1 must learn from data disjoint"),
    (lambda p: p["privacy"].update(tstr=["vae"]),
     "privacy.tstr: vae is not class-conditional"),
    (lambda p: p["privacy"].update(families=["dcgan-ref"]),
     "privacy.families: dcgan-ref learns from the val split"),
    (lambda p: p["privacy"].update(num_members=1), "privacy.num_members: must be >= 2"),
    (lambda p: p["train"].update(num_images=0), "train.num_images: must be > 0"),
    (lambda p: p["train"].update(split="test"), "train.split: must be one of"),
])
def test_bad_privacy_params_are_one_line_naming_the_key(raw, change, message):
    params = copy.deepcopy(raw)
    change(params)
    with pytest.raises(UserError) as err:
        parse_params(params)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_member_indices_are_a_seeded_subset():
    a, b = member_indices(100, 10, 0), member_indices(100, 10, 0)
    assert np.array_equal(a, b) and len(set(a)) == 10 and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, member_indices(100, 10, 1))
    assert np.array_equal(member_indices(7, None, 0), np.arange(7))
    with pytest.raises(UserError, match="train.num_images: 8 is more than the 7"):
        member_indices(7, 8, 0)


def test_privacy_profile_is_params_yaml_plus_the_sweep_and_the_dp_model():
    base = yaml.safe_load(Path("params.yaml").read_text())
    profile = yaml.safe_load(Path("params-privacy.yaml").read_text())
    assert {k: v for k, v in profile.items() if k not in ("zoo", "privacy")} == \
        {k: v for k, v in base.items() if k not in ("zoo", "privacy")}
    assert {k: v for k, v in profile["zoo"].items() if k in base["zoo"]} == base["zoo"]
    params = parse_params(profile)
    sizes = {name: parse_params(profile, family=name).train.num_images
             for name in params.privacy.families}
    assert {256, 1024, 4096, None} <= set(sizes.values())
    dp = parse_params(profile, family="cdcgan-dp")
    assert dp.train.dp.enabled and dp.train.dp.epsilon == 10 and dp.train.dp.delta == 1e-5
    assert {"dcgan", "cdcgan-dp"} <= set(params.privacy.tstr)
