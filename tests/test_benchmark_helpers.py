"""The benchmark scripts' own helpers: quality_ablation.py's `--only` entries (a variant, or a
variant from another seed, named as its result rows are, `name@seed<k>`; anything else is
refused) and inception_fid.py's draws of fakes (disjoint, the first one the single draw of
earlier files); train_throughput.py's two GEMM yardsticks; the command a result records."""

from __future__ import annotations

import argparse
import importlib.util
import sys

import numpy as np
import pytest
import torch

from conftest import REPO


def load(name: str):
    """A benchmark script as a module, importing its siblings as it does when run
    (`python benchmarks/<name>.py` puts benchmarks/ first on sys.path)."""
    if str(REPO / "benchmarks") not in sys.path:
        sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ablation = load("quality_ablation")
inception_fid = load("inception_fid")


@pytest.mark.parametrize("seed", [None, 0, 1, 12])
def test_an_entry_reads_back_as_the_row_it_names(seed: int | None) -> None:
    row = ablation.row_name("cond_ms_ema_99", seed)
    assert ablation.parse_row(row) == ("cond_ms_ema_99", seed)


@pytest.mark.parametrize("text", ["nope", "cond_ms@seed", "cond_ms@seedx", "cond_ms@seed-1",
                                  "nope@seed1", "cond_ms@1", "cond_ms@seed01", "cond_ms@seed\u00b2",
                                  "cond_ms@seed1@seed2"])
def test_an_unknown_variant_or_a_bad_seed_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="want a variant"):
        ablation.parse_row(text)


def test_an_entry_s_own_seed_wins_over_the_seed_flag_and_names_its_row() -> None:
    only = [("cond_ms", None), ("cond_ms", 1), ("cond_ms_ema_99", 0)]
    assert ablation.resolve_jobs(only, None) == [
        ("cond_ms", None, "cond_ms"), ("cond_ms", 1, "cond_ms@seed1"),
        ("cond_ms_ema_99", 0, "cond_ms_ema_99@seed0")]
    assert ablation.resolve_jobs(only[:1] + only[2:], 2) == [
        ("cond_ms", 2, "cond_ms@seed2"), ("cond_ms_ema_99", 0, "cond_ms_ema_99@seed0")]


@pytest.mark.parametrize(("only", "seed"), [([("cond_ms", None), ("cond_ms", None)], None),
                                            ([("cond_ms", 1), ("cond_ms", None)], 1)])
def test_two_entries_for_one_result_are_refused(only, seed) -> None:
    with pytest.raises(ValueError, match="cond_ms"):
        ablation.resolve_jobs(only, seed)


def test_a_row_s_protocol_names_what_ended_its_training() -> None:
    args = argparse.Namespace(seconds=1500.0, steps_per_epoch=100, parallel=2, n=10_000)
    fixed = {"cpu_seconds": 276.0, "steps": 2160, "epochs_trained": 6,
             "train": {"epochs": 6, "max_steps_per_epoch": 360}}
    assert ablation.protocol(fixed, args).startswith("6 x 360 steps (the variant's train.epochs)")
    # All its epochs, finished just past the budget (checkpoint I/O counts as CPU time too).
    late = {**fixed, "cpu_seconds": 1500.4}
    assert ablation.protocol(late, args).startswith("6 x 360 steps")
    timed = {"cpu_seconds": 1502.3, "steps": 4100, "epochs_trained": 41, "train": {"lr_d": 2e-3}}
    assert ablation.protocol(timed, args).startswith("1500 CPU-seconds of training on 1 thread")
    # A variant with epochs that the CPU budget stopped first was timed, not fixed.
    cut = {"cpu_seconds": 1502.3, "steps": 4000, "epochs_trained": 40, "train": {"epochs": 60}}
    assert ablation.protocol(cut, args).startswith("1500 CPU-seconds")
    # Rows written before epochs_trained: their steps over the flag's epoch length say it.
    old = {"cpu_seconds": 276.0, "steps": 2160, "train": {"epochs": 6}}
    flag = argparse.Namespace(**{**vars(args), "steps_per_epoch": 360})
    assert ablation.protocol(old, flag).startswith("6 x 360 steps")
    assert ablation.protocol({**old, "steps": 1800}, flag).startswith("1500 CPU-seconds")


def test_inception_draws_are_disjoint_and_the_first_is_the_single_draw() -> None:
    images = np.arange(50)[:, None, None] * np.ones((1, 2, 2), np.uint8)  # image i is all i
    draws = inception_fid.pick(images, 10, seed=3, where="x", draws=4)
    firsts = [set(d[:, 0, 0].tolist()) for d in draws]
    assert [len(f) for f in firsts] == [10] * 4
    assert len(set().union(*firsts)) == 40  # no image in two draws
    single = inception_fid.pick(images, 10, seed=3, where="x")
    assert len(single) == 1 and np.array_equal(single[0], draws[0])
    order = np.random.default_rng(3).permutation(50)[:10]  # what one draw always took
    assert draws[0][:, 0, 0].tolist() == order.tolist()


def test_inception_draws_refuse_too_few_images() -> None:
    with pytest.raises(SystemExit, match="fewer than 3 x N=20"):
        inception_fid.pick(np.zeros((50, 2, 2), np.uint8), 20, seed=0, where="x", draws=3)


DP_VARIANTS = [name for name, (_, train) in ablation.VARIANTS.items()
               if train.get("dp", {}).get("enabled")]


@pytest.mark.parametrize("name", DP_VARIANTS)
def test_a_dp_variant_sets_the_length_its_noise_is_calibrated_for(name: str) -> None:
    """A DP run's noise is calibrated for its planned D steps: a variant without its own
    epochs would plan 10 000 epochs and train with far more noise than its steps need."""
    from pipeline.config import dp_conflict, load_params

    _, train_over = ablation.VARIANTS[name]
    assert {"epochs", "max_steps_per_epoch"} <= train_over.keys()
    model, train = ablation.variant_configs(name, 7, load_params(REPO / "params.yaml"))
    assert (train.epochs, train.max_steps_per_epoch) == (train_over["epochs"],
                                                         train_over["max_steps_per_epoch"])
    assert train.dp.enabled and dp_conflict(model, train, 1) is None


def test_the_dp_variants_are_there() -> None:
    assert len(DP_VARIANTS) >= 4


def test_both_gemm_yardsticks_compute_the_same_product() -> None:
    """train_throughput's two GEMMs (MKL's mm, oneDNN's 1x1 convolution) time one product."""
    throughput = load("train_throughput")
    n = 48
    gen = torch.Generator().manual_seed(0)  # gemm_product's operands
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    torch.testing.assert_close(throughput.gemm_product(n, "mkl_mm")(), a @ b)
    image = throughput.gemm_product(n, "onednn_conv1x1")()  # (1, n, n, 1): (a @ b.T).T
    assert image.shape == (1, n, n, 1)
    torch.testing.assert_close(image[0, :, :, 0].T, a @ b.T, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="GEMM kind"):
        throughput.gemm_product(n, "blas")


def test_a_result_records_the_arguments_it_was_made_with() -> None:
    """The recorded command makes the file again: its arguments are kept (a result written
    with --out names that file), a path in the repo is shown relative to it, and a netns
    script's command runs inside `unshare -n` with loopback up, quoted for `sh -c`."""
    import shlex

    host = load("host")
    out = REPO / "benchmarks" / "results" / "x y.json"
    cmd = host.command_line("train_throughput.py", ["--out", str(out), "--repeats", "3"],
                            netns=True)
    words = shlex.split(cmd)
    assert words[:3] == ["unshare", "-n", "sh"] and words[3] == "-c"
    inner = words[4]
    assert inner.startswith("ip link set lo up; ")
    assert shlex.split(inner.removeprefix("ip link set lo up; ")) == [
        ".venv/bin/python", "benchmarks/train_throughput.py",
        "--out", "benchmarks/results/x y.json", "--repeats", "3"]
    assert str(REPO) not in cmd
    # Outside the repo a path stays as given; no netns: the bare command.
    assert shlex.split(host.command_line("step_anatomy.py", ["--out", "/tmp/a.json"])) == [
        ".venv/bin/python", "benchmarks/step_anatomy.py", "--out", "/tmp/a.json"]
