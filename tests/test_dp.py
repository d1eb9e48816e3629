"""DP-SGD of the discriminator (`train.dp`, pipeline/privacy/dp.py): the params it refuses, the
Opacus step (Poisson batches, per-sample clipping, noise, G's step leaving D alone), epsilon per
epoch across a resume, and a DP run through Ray Train.

The Ray test starts Ray: run it inside a network namespace (`make test` does), e.g.
    unshare -n sh -c 'ip link set lo up; .venv/bin/pytest tests/test_dp.py'
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from pipeline.config import DpConfig, ModelConfig, TrainConfig, parse_params
from pipeline.errors import UserError
from pipeline.models import build_models, load_checkpoint, load_discriminator
from pipeline.privacy.dp import PrivateDiscriminator
from pipeline.train import launcher
from pipeline.train.data import DeviceArrays
from pipeline.train.loop import LOG_FIELDS, STATE_FILE, LocalHooks, WorkerConfig, train_worker
from pipeline.train.steps import GanStep

from conftest import digits_npz, local_ray

# Tiny runs spend tiny budgets in few steps: Opacus notes its RDP orders could reach higher.
pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")

DP_LAYER = {"model": {"d_norm": "layer"}, "train": {"dp": {"enabled": True}},
            "ray": {"num_workers": 1}}


def merged(raw: dict, over: dict) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for section, values in over.items():
        out[section] = {**out.get(section, {}), **values}
    return out


# -- (a) params ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("raw", "expected"), [
    ({"train": {"dp": {"epsilon": 0}}}, "train.dp.epsilon: must be > 0"),
    ({"train": {"dp": {"delta": 1.0}}}, "train.dp.delta: must be < 1"),
    ({"train": {"dp": {"delta": 0}}}, "train.dp.delta: must be > 0"),
    ({"train": {"dp": {"max_grad_norm": -1}}}, "train.dp.max_grad_norm: must be > 0"),
    ({"train": {"dp": {"epsilom": 1}}}, "train.dp.epsilom: unknown key (valid: enabled, "),
    ({"train": {"dp": {"enabled": True}}, "ray": {"num_workers": 1}},
     "model.d_norm: batch cannot be trained with train.dp: BatchNorm mixes the samples"),
    (merged(DP_LAYER, {"ray": {"num_workers": 2}}),
     "ray.num_workers: must be 1 with train.dp, got 2: Poisson sampling and the privacy "
     "accountant are per process"),
    (merged(DP_LAYER, {"model": {"arch": "vae"}}), "model.arch: vae has no discriminator"),
    (merged(DP_LAYER, {"model": {"arch": "sngan", "d_norm": "spectral"}}),
     "model.d_norm: spectral cannot be trained with train.dp"),
    (merged(DP_LAYER, {"model": {"arch": "wgan-gp"}}),
     "train.loss: wgan-gp cannot be trained with train.dp"),
    (merged(DP_LAYER, {"train": {"r1_gamma": 1.0, "dp": {"enabled": True}}}),
     "train.r1_gamma: 1.0 cannot be trained with train.dp"),
    (merged(DP_LAYER, {"train": {"channels_last": True, "dp": {"enabled": True}}}),
     "train.channels_last: must be false with train.dp"),
    # A zoo family is validated as the top level is: its errors carry the family's prefix.
    ({"zoo": {"dcgan": {}, "dp": {"train": {"dp": {"enabled": True, "epsilon": -2}}}}},
     "zoo.dp.train.dp.epsilon: must be > 0"),
    ({"zoo": {"dcgan": {}, "dp": {"train": {"dp": {"enabled": True}}}}},
     "zoo.dp.model.d_norm: batch cannot be trained with train.dp"),
    ({"zoo": {"dcgan": {}, "dp": {"model": {"d_norm": "layer"},
                                  "train": {"dp": {"enabled": True}}}}},
     "zoo.dp.ray.num_workers: must be 1 with train.dp, got 2"),
])
def test_bad_dp_params_are_one_line_naming_the_key(raw: dict, expected: str) -> None:
    with pytest.raises(UserError) as err:
        parse_params(raw)
    assert str(err.value).startswith(f"params.yaml: {expected}"), str(err.value)
    assert "\n" not in str(err.value)


def test_good_dp_params_and_auto_workers_refused_at_launch() -> None:
    p = parse_params(DP_LAYER)
    assert p.train.dp == DpConfig(enabled=True, epsilon=10.0, delta=1e-5, max_grad_norm=1.0)
    zoo = {"zoo": {"dcgan": {}, "dp": {"model": {"d_norm": "layer"},
                                       "train": {"dp": {"enabled": True, "epsilon": 3}}}},
           "ray": {"num_workers": 1}}
    assert parse_params(zoo, family="dp").train.dp.epsilon == 3
    assert not parse_params(zoo).train.dp.enabled  # the top level stays non-private
    auto = parse_params(merged(DP_LAYER, {"ray": {"num_workers": "auto"}}))
    assert launcher.resolve_workers(auto, {"CPU": 1.0}) == 1
    with pytest.raises(UserError, match=r"^ray.num_workers: auto means 2 workers here, but "
                                        r"train.dp trains in one .*set ray.num_workers: 1$"):
        launcher.resolve_workers(auto, {"CPU": 2.0})


def test_a_dp_runs_name_covers_its_epochs() -> None:
    """Its noise is calibrated to the planned epochs: more epochs is another run (non-DP runs
    extend theirs, tests/test_launcher.py)."""
    names = {launcher.run_name(parse_params(merged(DP_LAYER, {"train": {
        "epochs": e, "dp": {"enabled": True}}})), "a", 1) for e in (2, 3)}
    assert len(names) == 2


# -- (b) the step and the loop, in-process -----------------------------------------------------
def private_step(digits_arrays, conditional: bool = False, max_grad_norm: float = 1.0,
                 diffaugment: tuple[str, ...] = (), d_conditioning: str = "plane"
                 ) -> tuple[GanStep, PrivateDiscriminator, DeviceArrays]:
    images, labels, _ = digits_arrays
    torch.manual_seed(0)
    G, D = build_models({"latent_dim": 16, "g_features": 8, "d_features": 8, "d_norm": "layer",
                         "conditional": conditional, "embed_dim": 4,
                         "d_conditioning": d_conditioning}, (1, 28, 28), 10)
    opt_g, opt_d = torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters())
    dp = PrivateDiscriminator(D, opt_d, DpConfig(enabled=True, max_grad_norm=max_grad_norm),
                              num_images=len(images), batch_size=16, steps=100)
    step = GanStep(G, D, opt_g, opt_d, loss="ns", latent_dim=16, device=torch.device("cpu"),
                   noise=torch.Generator().manual_seed(1), num_classes=10 if conditional else 0,
                   diffaugment=diffaugment, dp=dp)
    return step, dp, DeviceArrays.on(torch.device("cpu"), images, labels)


def test_poisson_batches_vary_around_the_sample_rate(digits_arrays) -> None:
    _, dp, data = private_step(digits_arrays)
    sizes = [len(x) for x, _ in dp.epoch_batches(data, epoch=1, steps=100)]
    assert abs(np.mean(sizes) - 16) < 1.5 and len(set(sizes)) > 5  # B ~ Binomial(N, 16/N)
    first = [y.tolist() for _, y in dp.epoch_batches(data, epoch=1, steps=3)]
    assert first == [y.tolist() for _, y in dp.epoch_batches(data, epoch=1, steps=3)]
    assert first != [y.tolist() for _, y in dp.epoch_batches(data, epoch=2, steps=3)]


@pytest.mark.parametrize(("conditional", "d_conditioning"),
                         [(False, "plane"), (True, "plane"), (True, "projection")])
def test_each_rows_gradient_is_clipped_and_gs_step_leaves_d_alone(digits_arrays, conditional,
                                                                  d_conditioning) -> None:
    """With a tiny C and no noise, D's gradient is exactly the clipped per-row sum over real and
    fake rows (noise alone would not give that), and G's phase adds no gradient to D."""
    clip = 1e-3
    step, dp, data = private_step(digits_arrays, conditional, clip, ("translation", "cutout"),
                                  d_conditioning)
    dp.optimizer.noise_multiplier = 0.0
    after_d: dict[str, torch.Tensor] = {}
    d_step = dp.step

    def record(loss: torch.Tensor) -> None:
        d_step(loss)
        after_d.update({n: p.detach().clone() for n, p in step.D.named_parameters()})
        after_d.update({f"{n}.grad": p.grad.clone() for n, p in step.D.named_parameters()})

    dp.step = record  # type: ignore[method-assign]
    real, labels = next(dp.epoch_batches(data, epoch=1, steps=1))
    stats = step(real, labels, g_step=True)
    assert torch.isfinite(stats).all()

    params = list(step.D.named_parameters())
    samples = [p.grad_sample for _, p in params]  # (rows, *shape): real + 16 fakes, one pass
    assert all(s.shape[0] == len(real) + 16 for s in samples)
    norms = torch.stack([s.flatten(1).norm(dim=1) for s in samples], 1).norm(dim=1)  # (rows,)
    assert norms.min() > 10 * clip  # every row needed clipping...
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)
    for (name, p), s in zip(params, samples, strict=True):
        clipped_sum = torch.einsum("i,i...", factor, s)
        assert torch.allclose(p.summed_grad, clipped_sum, atol=1e-9)
        # ...and D's gradient is that sum over the expected batch size, nothing more
        assert torch.allclose(after_d[f"{name}.grad"], clipped_sum / 16, atol=1e-9)
        assert torch.equal(p.grad, after_d[f"{name}.grad"])  # G's phase: no gradient into D
        assert torch.equal(p.detach(), after_d[name])  # nor a D update
        assert p.requires_grad  # D is trainable again after G's phase
    total = torch.stack([p.summed_grad.norm() for _, p in params]).norm()
    assert total <= (len(real) + 16) * clip * (1 + 1e-5)
    assert dp.steps() == 1  # one accountant step for one D update


def test_noise_has_the_calibrated_scale(digits_arrays) -> None:
    step, dp, data = private_step(digits_arrays, max_grad_norm=0.5)
    real, labels = next(dp.epoch_batches(data, epoch=1, steps=1))
    step(real, labels, g_step=True)
    noise = torch.cat([(p.grad * 16 - p.summed_grad).flatten() for p in step.D.parameters()])
    assert noise.std().item() == pytest.approx(dp.noise_multiplier * 0.5, rel=0.05)


def test_an_empty_poisson_batch_is_a_step(digits_arrays) -> None:
    step, dp, _ = private_step(digits_arrays)
    before = [p.detach().clone() for p in step.D.parameters()]
    stats = step(torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long), g_step=True)
    assert torch.isfinite(stats).all() and stats[2] == 0  # D(x) of no image: 0
    assert dp.steps() == 1
    assert any(not torch.equal(a, p) for a, p in zip(before, step.D.parameters(), strict=True))


def dp_config(epochs: int = 3, **dp: object) -> WorkerConfig:
    return WorkerConfig(
        model=ModelConfig(latent_dim=16, g_features=8, d_features=8, d_norm="layer"),
        train=TrainConfig(epochs=epochs, batch_size=32, max_steps_per_epoch=6, grid_size=16,
                          dp={"enabled": True, "epsilon": 4.0, **dp}), seed=0)


def test_epsilon_every_epoch_rises_to_the_target(tmp_path: Path, digits_arrays, one_thread) -> None:
    hooks = LocalHooks(tmp_path / "ckpt")
    last = train_worker(dp_config(), *digits_arrays, hooks)
    eps = [r["dp_epsilon"] for r in hooks.reports]
    assert len(eps) == 3 and eps[0] < eps[1] < eps[2]
    assert 3.9 < eps[-1] <= 4.0  # calibrated to the planned 18 steps, not beyond
    assert [r["dp_steps"] for r in hooks.reports] == [6, 12, 18]
    q, sigma = 32 / len(digits_arrays[0]), last["dp_noise_multiplier"]
    assert last["dp_sample_rate"] == q and last["dp_delta"] == 1e-5
    state = load_checkpoint(tmp_path / "ckpt" / "epoch_003" / STATE_FILE)
    assert state["dp"]["accountant"]["history"] == [(sigma, q, 18)]
    independent = RDPAccountant()
    independent.history = [(sigma, q, 18)]
    assert independent.get_epsilon(1e-5) == eps[-1]


def test_more_d_steps_per_g_step_spend_the_budget_per_d_step(tmp_path: Path, digits_arrays,
                                                             one_thread) -> None:
    # Bie et al. 2023's fix for DP GANs, n_critic D steps per G step: every batch is a D step
    # the accountant counts and the noise was calibrated for; G steps on every third batch.
    base = dp_config()
    cfg = WorkerConfig(model=base.model, train=base.train.model_copy(update={"n_critic": 3}),
                       seed=0)
    hooks = LocalHooks(tmp_path / "ckpt")
    last = train_worker(cfg, *digits_arrays, hooks)
    assert [r["dp_steps"] for r in hooks.reports] == [6, 12, 18]
    assert 3.9 < last["dp_epsilon"] <= 4.0
    state = load_checkpoint(tmp_path / "ckpt" / "epoch_003" / STATE_FILE)
    adam_steps = {name: {int(s["step"]) for s in state[name]["state"].values()}
                  for name in ("opt_d", "opt_g")}
    assert adam_steps == {"opt_d": {18}, "opt_g": {6}}


def test_resume_continues_the_accountant(tmp_path: Path, digits_arrays, one_thread) -> None:
    straight = LocalHooks(tmp_path / "straight")
    train_worker(dp_config(), *digits_arrays, straight)

    class Crash(Exception):
        pass

    def crash(epoch: int, step: int) -> None:
        if (epoch, step) == (2, 3):
            raise Crash

    resumed = LocalHooks(tmp_path / "resumed", on_step=crash)
    with pytest.raises(Crash):
        train_worker(dp_config(), *digits_arrays, resumed)
    resumed.on_step = lambda epoch, step: None
    train_worker(dp_config(), *digits_arrays, resumed)
    assert [r["epoch"] for r in resumed.reports] == [1, 2, 3]
    assert [r["dp_steps"] for r in resumed.reports] == [6, 12, 18]
    assert resumed.reports[-1]["dp_epsilon"] == straight.reports[-1]["dp_epsilon"]
    first, last = (load_checkpoint(tmp_path / "resumed" / f"epoch_00{e}" / STATE_FILE)["dp"]
                   for e in (1, 3))
    assert first["secret"] == last["secret"]  # the resumed epochs drew from the same seed
    # More epochs than this run's noise was calibrated for: refused, naming train.epochs.
    with pytest.raises(UserError, match=r"^train.epochs: this DP run's noise"):
        train_worker(dp_config(epochs=4), *digits_arrays, resumed)


# -- (c) through Ray Train ----------------------------------------------------------------------
@pytest.mark.integration
def test_dp_training_through_ray(tmp_path: Path, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    data = digits_npz(tmp_path / "train.npz")
    params = parse_params({
        "data": {"dataset": "digits"},
        "model": {"latent_dim": 16, "g_features": 8, "d_features": 8, "d_norm": "layer"},
        "train": {"epochs": 2, "batch_size": 32, "max_steps_per_epoch": 4, "grid_size": 16,
                  "dp": {"enabled": True, "epsilon": 2.0}},
        "ray": {"num_workers": 1, "storage_path": str(tmp_path / "ray_results")},
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    })
    with local_ray(num_cpus=1):
        summary = launcher.train(params, data, tmp_path / "models", tmp_path / "metrics")

    train_json = json.loads((tmp_path / "metrics" / "train.json").read_text())
    assert train_json == summary and train_json["dp_steps"] == 8
    assert 1.9 < train_json["dp_epsilon"] <= 2.0 and train_json["dp_delta"] == 1e-5
    assert train_json["dp_sample_rate"] == 32 / 1797 and train_json["dp_max_grad_norm"] == 1.0
    assert train_json["dp_noise_multiplier"] > 0
    load_discriminator(tmp_path / "models" / "discriminator.pt")  # the bare D, no Opacus
    rows = list(csv.DictReader((tmp_path / "metrics" / "train_log.csv").read_text()
                               .splitlines()))
    assert list(rows[0]) == [*LOG_FIELDS, "dp_epsilon"]
    eps = [float(r["dp_epsilon"]) for r in rows]
    assert len(eps) == 2 and 0 < eps[0] < eps[1] == pytest.approx(train_json["dp_epsilon"])

    run_id = json.loads((tmp_path / "models" / "run.json").read_text())["run_id"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    history = sorted(client.get_metric_history(run_id, "curves/dp_epsilon"),
                     key=lambda m: m.step)
    assert [m.step for m in history] == [1, 2]
    assert [m.value for m in history] == pytest.approx(eps)
