"""Quality per CPU-minute: each training technique (params) trained for the same CPU time (or,
for the variants that set their epochs, the same steps), scored with the pipeline's own metrics
(domain FID/KID/precision/recall at N, beside the real floor), on the prepared data and the
pipeline's FeatureNet.

    dvc repro featurenet     # data/prepared + models/featurenet.pt
    .venv/bin/python benchmarks/quality_ablation.py --seconds 480 --parallel 2

Each variant is `params.yaml`'s model/train sections with a few overrides (`VARIANTS`). It
trains in-process (`pipeline.train.loop.train_worker`, one thread per variant, `--parallel`
variants at a time) and stops after the first epoch that ends past `--seconds` of its own CPU
time (`time.process_time`: equal compute, whatever else loads the machine), or when it has
trained the `epochs` its variant sets (the `default_<k>ep*` rows: k x 360 steps, the
pipeline's exact lengths, which a learning-rate decay needs to know). Its exported
generator (the EMA one when on) is sampled (`pipeline.generate.sample`) and scored
(`pipeline.metrics.evaluate.evaluate_quality`, domain space only: Inception costs ~6 images/s
here); a conditional one also gets the audit stage's TSTR accuracy (`privacy.tstr_*`: the
FeatureNet classifier trained on its samples, tested on the real test split) over the TRTR
baseline, computed once per invocation. The `dp_*` variants are the privacy profile's DP model
(issue 14: D trained with DP-SGD at eps = 10), each with its own length, for which its noise
is calibrated (their rows: `--out benchmarks/results/quality_ablation_dp.json`). Writes
benchmarks/results/quality_ablation.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import multiprocessing as mp
import platform
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from host import cpu_model

if TYPE_CHECKING:
    from pipeline.config import ModelConfig, Params, TrainConfig
    from pipeline.data.arrays import Split
    from pipeline.privacy.tstr import TstrSpec

ROOT = Path(__file__).resolve().parents[1]

# The recipe the first rows were measured against, before this ablation chose new defaults:
# the DCGAN paper's Adam 2e-4 / 2e-4 at batch 128, unconditional. Every variant overrides
# params.yaml, so each one names all it changes and its row stays reproducible as params.yaml
# moves on.
DCGAN_2015: dict[str, Any] = {"lr_g": 2e-4, "lr_d": 2e-4, "batch_size": 128}
UNCONDITIONAL: dict[str, Any] = {"conditional": False}
# The conditional default this ablation chose (params.yaml since 2026-12-06).
CONDITIONAL: dict[str, Any] = {"conditional": True, "d_conditioning": "projection"}
FAST_G_B64: dict[str, Any] = {"lr_g": 1e-3, "lr_d": 5e-4, "batch_size": 64}
# On top of it, the default since 2026-12-07 10:12: mode seeking, the EMA and D at 2x G's rate.
FASTER_D: dict[str, Any] = {"mode_seeking": 1.0, "ema_decay": 0.99, "lr_d": 2e-3}
# The default pipeline's length until 2026-12-07 19:10 (8 epochs since): a variant with its own
# epochs trains exactly them.
SIX_EPOCHS: dict[str, Any] = {"epochs": 6, "max_steps_per_epoch": 360}


def _old(model: dict[str, Any] | None = None, **train: Any,
         ) -> tuple[dict[str, Any], dict[str, Any]]:
    """A first-round variant: unconditional, DCGAN_2015's rates unless `train` overrides."""
    return {**UNCONDITIONAL, **(model or {})}, {**DCGAN_2015, **train}


def _cond(model: dict[str, Any] | None = None, **train: Any,
          ) -> tuple[dict[str, Any], dict[str, Any]]:
    """A conditional variant: projection D at FAST_G_B64's rates unless overridden."""
    return {**CONDITIONAL, **(model or {})}, {**FAST_G_B64, **train}


# The privacy profile's DP model (params-privacy.yaml `cdcgan-dp`): small, conditional, with a
# layer-norm D (Opacus needs no BatchNorm) and NCHW (its per-sample conv gradients).
DP_SMALL: dict[str, Any] = {"d_norm": "layer", "latent_dim": 64, "g_features": 32,
                            "d_features": 32}
DP_EPS10: dict[str, Any] = {"enabled": True, "epsilon": 10.0, "delta": 1e-5, "max_grad_norm": 1.0}


def _dp(batch_size: int, epochs: int, steps_per_epoch: int, model: dict[str, Any] | None = None,
        **train: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A DP variant of the default recipe: `epochs` x `steps_per_epoch` D steps of
    `batch_size` (the noise is calibrated for exactly them, so each sets its length)."""
    return _cond({**DP_SMALL, **(model or {})},
                 **{**FASTER_D, "batch_size": batch_size, "epochs": epochs,
                    "max_steps_per_epoch": steps_per_epoch, "channels_last": False,
                    "dp": DP_EPS10, **train})


# name -> (model overrides, train overrides): `ema` against `baseline`, then each other
# technique on top of the EMA; then the rates and batch; then the conditional ones.
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "baseline": _old(),
    "ema": _old(ema_decay=0.999),
    "ttur": _old(ema_decay=0.999, lr_d=4e-4, lr_g=1e-4),
    "hinge_sn": _old({"d_norm": "spectral"}, ema_decay=0.999, loss="hinge"),
    "diffaugment": _old(ema_decay=0.999, diffaugment=["translation", "cutout"]),
    "resize_g": _old({"g_upsample": "resize"}, ema_decay=0.999),
    "r1": _old(ema_decay=0.999, r1_gamma=0.1),
    # G learning faster than D (what held on digits in tests/test_quality_guard.py's sweeps).
    "fast_g": _old(lr_g=1e-3, lr_d=5e-4),
    "fast_g_ema": _old(lr_g=1e-3, lr_d=5e-4, ema_decay=0.995),
    "fast_g_b64": _old(**FAST_G_B64),
    "fast_g_b32": _old(**{**FAST_G_B64, "batch_size": 32}),
    "faster_g_b64": _old(**{**FAST_G_B64, "lr_g": 2e-3}),
    "fast_g_slow_d_b64": _old(**{**FAST_G_B64, "lr_d": 2.5e-4}),
    # Class-conditional at the fast_g_b64 rates: how D reads the label (model.d_conditioning).
    "cond_plane": _cond({"d_conditioning": "plane"}),
    "cond_projection": _cond(),
    # On the conditional default: a smaller batch (more steps for the same images) and the EMA.
    "cond_b32": _cond(batch_size=32),
    "cond_ema": _cond(ema_decay=0.999),
    "cond_ema_995": _cond(ema_decay=0.995),
    "cond_ema_99": _cond(ema_decay=0.99),
    "cond_b32_ema": _cond(batch_size=32, ema_decay=0.999),
    # Against G's samples being more alike than real images are (recall, TSTR): mode seeking
    # (MSGAN's weight 1 and heavier ones), alone and with the EMA that raised TSTR.
    "cond_ms": _cond(mode_seeking=1.0),
    "cond_ms_ema_99": _cond(mode_seeking=1.0, ema_decay=0.99),
    "cond_ms3_ema_99": _cond(mode_seeking=3.0, ema_decay=0.99),
    "cond_ms10_ema_99": _cond(mode_seeking=10.0, ema_decay=0.99),
    # On that default: a stronger D, against G dropping modes (recall): wider, or learning as
    # fast as G, 2x and 4x as fast (faster_d: the default since 2026-12-07 10:12).
    "cond_ms_ema_99_fast_d": _cond(mode_seeking=1.0, ema_decay=0.99, lr_d=1e-3),
    "cond_ms_ema_99_wide_d": _cond({"d_features": 96}, mode_seeking=1.0, ema_decay=0.99),
    "cond_ms_ema_99_faster_d": _cond(mode_seeking=1.0, ema_decay=0.99, lr_d=2e-3),
    "cond_ms_ema_99_fastest_d": _cond(mode_seeking=1.0, ema_decay=0.99, lr_d=4e-3),
    # The faster_d default at the pipeline's length then (6 x 360 steps, whatever
    # --steps-per-epoch says; --seconds must lie past it), with both rates decaying linearly to
    # 0 over the whole run (SN-GAN's schedule) or over its second half (train.lr_decay_start).
    "default_6ep": _cond(**SIX_EPOCHS, **FASTER_D),
    "default_6ep_decay_0": _cond(**SIX_EPOCHS, **FASTER_D, lr_decay_start=0.0),
    "default_6ep_decay_05": _cond(**SIX_EPOCHS, **FASTER_D, lr_decay_start=0.5),
    # The same length: a longer EMA, D at 1x and 0.75x G's rate, Adam without momentum.
    "default_6ep_ema_995": _cond(**SIX_EPOCHS, **{**FASTER_D, "ema_decay": 0.995}),
    "default_6ep_fast_d": _cond(**SIX_EPOCHS, **{**FASTER_D, "lr_d": 1e-3}),
    "default_6ep_lr_d_15": _cond(**SIX_EPOCHS, **{**FASTER_D, "lr_d": 1.5e-3}),
    "default_6ep_beta1_0": _cond(**SIX_EPOCHS, **FASTER_D, beta1=0.0),
    "default_6ep_ema_995_decay_05": _cond(**SIX_EPOCHS, **{**FASTER_D, "ema_decay": 0.995},
                                          lr_decay_start=0.5),
    # The same length: both rates doubled (D still 2x G's), Adam's beta2 0.99.
    "default_6ep_fast_rates": _cond(**SIX_EPOCHS, **{**FASTER_D, "lr_d": 4e-3}, lr_g=2e-3),
    "default_6ep_beta2_99": _cond(**SIX_EPOCHS, **FASTER_D, beta2=0.99),
    # The same length: the class also modulates every BatchNorm of G (model.g_conditioning).
    "default_6ep_cbn": _cond({"g_conditioning": "batchnorm"}, **SIX_EPOCHS, **FASTER_D),
    # The default recipe for longer: what the quality goals need in steps (360 per epoch;
    # default_8ep is the default pipeline's length since 2026-12-07 19:10).
    "default_8ep": _cond(**{**SIX_EPOCHS, "epochs": 8}, **FASTER_D),
    "default_10ep": _cond(**{**SIX_EPOCHS, "epochs": 10}, **FASTER_D),
    # DP-SGD of D (issue 14) at eps = 10, delta = 1e-5, C = 1: the privacy profile's small
    # conditional DCGAN (cdcgan-dp), its former 2 x 250 steps of 64, then ~8x its images (256 000
    # real rows) in batches of 64, 256 and 512. At eps = 10 on 54 000 images more steps cost
    # little noise (sigma 0.38 at 500 steps of 64, 0.43 at 4 000; 0.49 at 1 000 of 256):
    # compute, not privacy, bounds how long it trains here.
    "dp_b64_2x250": _dp(64, 2, 250),
    "dp_b64_8x500": _dp(64, 8, 500),
    "dp_b256_5x200": _dp(256, 5, 200),
    "dp_b512_5x100": _dp(512, 5, 100),
    # Batch 1 024 at the same images, and batch 512 for twice the images.
    "dp_b1024_5x50": _dp(1024, 5, 50),
    "dp_b512_10x100": _dp(512, 10, 100),
    # At batch 512: Bie et al.'s DCGAN rates (2e-4 for G and D), and D alone at 2e-4.
    "dp_b512_5x100_lr2e4": _dp(512, 5, 100, lr_g=2e-4, lr_d=2e-4),
    "dp_b512_5x100_slow_d": _dp(512, 5, 100, lr_d=2e-4),
    # At batch 512: no mode seeking (with a noisy D, G's loss is mostly that term), and two
    # D steps per G step (Bie et al. take 100: D ahead of G).
    "dp_b512_5x100_ms0": _dp(512, 5, 100, mode_seeking=0.0),
    "dp_b512_5x100_nd2": _dp(512, 5, 100, n_critic=2),
    # Four times the images (1 024 000 real rows): batch 512 for 2 000 steps, 1 024 for 1 000.
    "dp_b512_20x100": _dp(512, 20, 100),
    "dp_b1024_20x50": _dp(1024, 20, 50),
}
# channels_last changes speed, not what a step computes: it is measured in train_throughput.py.


class TimeUp(Exception):
    pass


def variant_configs(name: str, steps_per_epoch: int, params: Params
                    ) -> tuple[ModelConfig, TrainConfig]:
    """`params`' model and train sections with the variant's overrides; a variant that sets no
    epochs trains until its CPU time is spent (10 000 epochs of `steps_per_epoch`)."""
    from pipeline.config import ModelConfig, TrainConfig

    model_over, train_over = VARIANTS[name]
    return (ModelConfig(**{**params.model.model_dump(), **model_over}),
            TrainConfig(**{**params.train.model_dump(), "epochs": 10_000,
                           "max_steps_per_epoch": steps_per_epoch, **train_over}))


def train_variant(name: str, seconds: float, steps_per_epoch: int, out: str,
                  seed: int | None = None) -> dict[str, Any]:
    """Train one variant on 1 thread for ~`seconds` of CPU time, or for its own `epochs` if that
    ends first, from `seed` (None: params.yaml's seed); write its generator to `out`."""
    import torch

    from pipeline.config import load_params
    from pipeline.models import load_checkpoint, make_checkpoint, save_checkpoint
    from pipeline.train.data import load_train_arrays
    from pipeline.train.loop import STATE_FILE, Hooks, WorkerConfig, train_worker

    torch.set_num_threads(1)
    params = load_params(ROOT / "params.yaml")
    model_over, train_over = VARIANTS[name]
    model, train = variant_configs(name, steps_per_epoch, params)
    arrays = load_train_arrays(ROOT / "data" / "prepared" / "train.npz")
    keep = Path(tempfile.mkdtemp(prefix=f"ablation-{name}-"))
    start, wall = time.process_time(), time.perf_counter()
    history: list[dict[str, Any]] = []

    def report(metrics: dict[str, Any], ckpt_dir: Path | None) -> None:
        history.append(metrics)
        if ckpt_dir is not None:
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(ckpt_dir, keep)
        if time.process_time() - start > seconds:
            raise TimeUp

    seed = params.seed if seed is None else seed
    cfg = WorkerConfig(model=model, train=train, seed=seed)
    with contextlib.suppress(TimeUp):  # the budget is spent: keep the last checkpoint
        train_worker(cfg, arrays.images, arrays.labels, arrays.class_names, Hooks(report=report))
    state = load_checkpoint(keep / STATE_FILE)
    generator = state["generator_ema"]["model"] if "generator_ema" in state \
        else state["generator"]
    meta = {k: state[k] for k in ("model_config", "image_shape", "num_classes", "class_names",
                                  "epoch", "step")}
    save_checkpoint(out, make_checkpoint(**meta, generator=generator))
    shutil.rmtree(keep, ignore_errors=True)
    return {"cpu_seconds": round(time.process_time() - start, 1),
            "wall_seconds": round(time.perf_counter() - wall, 1), "steps": state["step"],
            "epochs_trained": state["epoch"],
            "images_per_s": float(np.median([h["images_per_s"] for h in history])),
            "model": model_over, "train": train_over, "seed": seed}


def score(generator: str, n: int, row: str) -> dict[str, Any]:
    """Domain-space quality of `n` fakes, exactly as the evaluate stage computes it; for a
    conditional G also its TSTR accuracy, as the audit stage computes it (`privacy.tstr_*`),
    from samples drawn under the result's `row` name: a replica `name@seed<k>` draws its own.
    (The `@seed1` rows of 2026-12-07 07:34 drew theirs under the bare variant name.)"""
    import torch

    from pipeline.config import load_params
    from pipeline.generate import sample
    from pipeline.metrics.evaluate import evaluate_quality
    from pipeline.models import load_generator

    params = load_params(ROOT / "params.yaml")
    G, meta = load_generator(generator)
    images, labels = sample(G, meta, n, seed=params.seed + 1)
    cfg = params.evaluate.model_copy(update={
        "num_samples": n, "inception": params.evaluate.inception.model_copy(
            update={"enabled": "off"})})
    with tempfile.TemporaryDirectory() as tmp:
        fake = Path(tmp) / "eval.npz"
        np.savez(fake, images=images, labels=labels)
        quality = evaluate_quality(ROOT / "data" / "prepared", fake, ROOT / "models" /
                                   "featurenet.pt", cfg, params.seed)
    if meta["model_config"].get("conditional"):
        from pipeline.privacy.tstr import tstr

        test = _split("test")
        quality["tstr_accuracy"] = tstr(G, meta, (test.images, test.labels), _tstr_spec(),
                                        torch.device("cpu"), row)
    return quality


def _split(name: str) -> Split:
    from pipeline.data.arrays import load_split

    return load_split(ROOT / "data" / "prepared" / f"{name}.npz")


@functools.cache  # one read of train.npz per invocation, for its length
def _tstr_spec() -> TstrSpec:
    """The audit stage's TSTR classifier recipe (params.yaml `privacy.tstr_*`)."""
    from pipeline.config import load_params
    from pipeline.privacy.tstr import TstrSpec

    return TstrSpec.from_params(load_params(ROOT / "params.yaml"), len(_split("train").images))


def trtr_accuracy() -> float:
    """TSTR's baseline: the same classifier on as many real training images."""
    import torch

    from pipeline.privacy.tstr import trtr

    train, test = _split("train"), _split("test")
    return trtr((train.images, train.labels), (test.images, test.labels),
                len(train.class_names), _tstr_spec(), torch.device("cpu"))


def _worker(name: str, seconds: float, steps: int, out: str, seed: int | None, row: str,
            queue: mp.Queue) -> None:
    try:
        queue.put((row, train_variant(name, seconds, steps, out, seed)))
    except Exception as exc:  # noqa: BLE001 - reported in the results
        queue.put((row, {"error": f"{type(exc).__name__}: {exc}"}))


def row_name(name: str, seed: int | None) -> str:
    """A result's key: the variant's name, `name@seed<k>` when trained from another seed."""
    return name if seed is None else f"{name}@seed{seed}"


def parse_row(text: str) -> tuple[str, int | None]:
    """`--only`'s entries, `row_name`'s inverse: `name` or `name@seed<k>` of a known variant."""
    match = re.fullmatch(r"(.+?)(?:@seed(0|[1-9][0-9]*))?", text, flags=re.ASCII)
    if match is None or match[1] not in VARIANTS:
        raise argparse.ArgumentTypeError(f"{text!r}: want a variant of VARIANTS, optionally "
                                         f"@seed<k> ({', '.join(VARIANTS)})")
    return match[1], None if match[2] is None else int(match[2])


def resolve_jobs(only: list[tuple[str, int | None]], seed: int | None
                 ) -> list[tuple[str, int | None, str]]:
    """(variant, seed, row) per `--only` entry: its own @seed<k>, else `--seed`, else
    params.yaml's (None). The rows name the results and must be distinct."""
    jobs = [(name, seed if own is None else own) for name, own in only]
    rows = [row_name(name, s) for name, s in jobs]
    repeated = sorted({row for row in rows if rows.count(row) > 1})
    if repeated:
        raise ValueError(f"--only names the same result twice: {', '.join(repeated)}")
    return [(name, s, row) for (name, s), row in zip(jobs, rows, strict=True)]


def protocol(info: dict[str, Any], args: argparse.Namespace) -> str:
    """How a row was trained: for `--seconds` of CPU time, or for all of its variant's own
    `epochs` when they ended first (rows before `epochs_trained`: its steps say so)."""
    epochs = info.get("train", {}).get("epochs")
    trained = info.get("epochs_trained")
    if trained is None and epochs:
        per_epoch = info.get("train", {}).get("max_steps_per_epoch") or args.steps_per_epoch
        trained = info.get("steps", 0) // per_epoch
    if epochs is not None and trained == epochs:
        length = (f"{epochs} x {info['steps'] // epochs} steps (the variant's train.epochs) "
                  f"on 1 thread")
    else:
        length = f"{args.seconds:.0f} CPU-seconds of training on 1 thread"
    return f"{length}, {args.parallel} variants at a time; domain metrics at N={args.n}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=480.0,
                        help="training CPU time per variant (a cap for those that set epochs)")
    parser.add_argument("--parallel", type=int, default=2, help="variants trained at once")
    parser.add_argument("--steps-per-epoch", type=int, default=100)
    parser.add_argument("--n", type=int, default=10_000, help="fakes and real images scored")
    parser.add_argument("--only", nargs="*", type=parse_row, metavar="NAME[@seed<k>]",
                        default=[(name, None) for name in VARIANTS],
                        help="variants to train, each from params.yaml's seed or from seed k")
    parser.add_argument("--seed", type=int, default=None,
                        help="train the --only entries without their own @seed<k> from this "
                             "seed instead of params.yaml's (rows name@seed<k>)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="also copy each variant's generator to DIR/<row>.pt (for "
                             "benchmarks/inception_ablation.py)")
    parser.add_argument("--merge", action="store_true",
                        help="add to --out's variants instead of replacing them")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks" / "results" / "quality_ablation.json")
    args = parser.parse_args()
    try:
        jobs = resolve_jobs(args.only, args.seed)
    except ValueError as exc:
        parser.error(str(exc))

    ctx = mp.get_context("spawn")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(0, len(jobs), args.parallel):
            queue: mp.Queue = ctx.Queue()
            batch = [row for _, _, row in jobs[i : i + args.parallel]]
            procs = [ctx.Process(target=_worker, args=(name, args.seconds, args.steps_per_epoch,
                                                       f"{tmp}/{row}.pt", seed, row, queue))
                     for name, seed, row in jobs[i : i + args.parallel]]
            for p in procs:
                p.start()
            for _ in batch:
                row, info = queue.get(timeout=args.seconds * 4 + 600)
                results[row] = info
            for p in procs:
                p.join()
            for row in batch:
                if "error" not in results[row]:
                    results[row]["quality"] = score(f"{tmp}/{row}.pt", args.n, row)
                    if args.keep is not None:
                        args.keep.mkdir(parents=True, exist_ok=True)
                        shutil.copy(f"{tmp}/{row}.pt", args.keep / f"{row}.pt")
                print(row, json.dumps(results[row]), flush=True)

    scored = [info["quality"] for info in results.values() if "tstr_accuracy" in
              info.get("quality", {})]
    if scored:  # TSTR / TRTR: the baseline once, on this machine
        baseline = trtr_accuracy()
        for q in scored:
            q.update(trtr_accuracy=baseline, tstr_over_trtr=q["tstr_accuracy"] / baseline)

    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    machine = f"{platform.machine()}, {mp.cpu_count()} cores, {platform.platform()}"
    cpu = cpu_model()
    for info in results.values():
        info.update(protocol=protocol(info, args), date=date, machine=machine, cpu=cpu)
    if args.merge and args.out.is_file():  # keep the variants this run did not train
        earlier = json.loads(args.out.read_text())
        kept = {name: {"machine": earlier.get("machine"), **info}  # files before per-row machine
                for name, info in earlier["variants"].items()}
        results = {**kept, **results}
    report = {"variants": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    n = f"{args.n // 1000}k" if args.n % 1000 == 0 else str(args.n)
    print(f"\n| variant | steps | fid_domain_{n} | recall | precision | TSTR / TRTR |\n"
          "|---|---|---|---|---|---|")
    for name, info in results.items():
        q = info.get("quality")
        if not q:
            print(f"| {name} | failed: {info.get('error')} | | | | |")
            continue
        ratio = f"{q['tstr_over_trtr']:.3f}" if "tstr_over_trtr" in q else "-"
        print(f"| {name} | {info.get('steps', '-')} | {q[f'fid_domain_{n}']:.1f} | "
              f"{q[f'recall_domain_{n}']:.3f} | {q[f'precision_domain_{n}']:.3f} | {ratio} |")


if __name__ == "__main__":
    main()
