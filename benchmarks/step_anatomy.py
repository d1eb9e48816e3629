"""Where the default GAN step's time goes, layer by layer, and what the step's three CPU
changes of 2026-12-08 buy, alone and together.

  layers   every convolution of the default G and D (params.yaml's model, its layout and the
           global batch): FLOP by `torch.utils.flop_counter`, forward and backward times (the
           backward as the step runs it: input and weight gradients; D's first layer has no
           input gradient on real images, but has one on fakes), GFLOP/s, set against the
           machine's GEMM (train_throughput.py's `GEMMS`, both kinds, measured in this run)
  changes  each change against the code it replaced, on the same tensors:
           - g_first_layer: G's first layer as one product (`LatentProjection`) against the
             transposed conv it computes (`nn.ConvTranspose2d.forward`), forward + backward;
           - d_in_g_phase: D's forward + backward in G's phase frozen (input gradient only,
             `steps.frozen`) against with its parameters' gradients;
           - adam: one step of G's and D's Adam, fused (`loop.make_optimizers`) against
             torch's CPU default (one parameter at a time);
  step     the whole default step (train_throughput.py's plain_cl: 1 process x 2 threads,
           params.yaml's step) as shipped against the same step with the three changes
           undone in this process (the replaced code, restored for the comparison only)

Contenders run interleaved (A B A B ...), `--repeats` rounds (at least 3); a micro contender's
round is the median of `--micro` calls after 5 of warm-up. Medians with min-max, ratios of
medians. From the repo root:

    .venv/bin/python benchmarks/step_anatomy.py [--repeats 5 --steps 100 --micro 30 --out PATH]

Writes benchmarks/results/step_anatomy.json.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import pipeline.train.steps as steps_module
from pipeline.config import Params, load_params
from pipeline.io import write_json
from pipeline.models import build_models
from pipeline.models.dcgan import LatentProjection
from pipeline.train import loop

import train_throughput as throughput  # a sibling script (benchmarks/ is on sys.path)
from host import command_line, machine

ROOT = Path(__file__).resolve().parents[1]
THREADS = throughput.THREADS


def seconds(fn: Callable[[], Any], calls: int) -> float:
    """Median wall time of `calls` calls of `fn` after 5 of warm-up."""
    return throughput.median_seconds(fn, calls, warmup=5)


def models(params: Params, images: np.ndarray, labels: np.ndarray
           ) -> tuple[nn.Module, nn.Module, int]:
    """params.yaml's G and D for these images (N, H, W, C) and labels, in the step's layout
    (as `train_throughput.gan_steps` builds them), and the number of classes."""
    num_classes = int(labels.max()) + 1
    torch.manual_seed(params.seed)
    G, D = build_models(params.model.model_dump(),
                        (images.shape[3], images.shape[1], images.shape[2]), num_classes)
    if params.train.channels_last:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    return G, D, num_classes


def _conv_inputs(G: nn.Module, D: nn.Module, z: torch.Tensor, labels: torch.Tensor
                 ) -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """Every convolution of G and D with the input it gets in the step (one G forward, one D
    forward of G's images), keyed "G.net.0", ..."""
    seen: dict[str, tuple[nn.Module, torch.Tensor]] = {}

    def keep(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], _out: Any) -> None:
            seen.setdefault(name, (module, args[0].detach()))
        return hook

    hooks = [module.register_forward_hook(keep(f"{tag}.{name}"))
             for tag, model in (("G", G), ("D", D)) for name, module in model.named_modules()
             if isinstance(module, nn.Conv2d | nn.ConvTranspose2d)]
    try:
        with torch.no_grad():
            D(G(z, labels), labels) if labels is not None else D(G(z))
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def layer_table(G: nn.Module, D: nn.Module, batch: int, num_classes: int,
                calls: int) -> list[dict[str, Any]]:
    """Per convolution: FLOP (forward), forward and forward + backward (input and weight
    gradients) times at `batch`, and GFLOP/s (backward FLOP = 2x forward)."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(batch, G.latent_dim, generator=gen)
    labels = (torch.randint(0, num_classes, (batch,), generator=gen)
              if getattr(G, "num_classes", 0) else None)
    rows = []
    for name, (layer, x) in _conv_inputs(G, D, z, labels).items():
        x = x.clone().requires_grad_(True)
        with FlopCounterMode(display=False) as counter:
            out = layer(x)
        flop = counter.get_total_flops()
        grad = torch.randn_like(out)
        inputs = [x, *layer.parameters()]
        forward = seconds(lambda layer=layer, x=x: layer(x), calls)
        both = seconds(lambda layer=layer, x=x, g=grad, i=inputs: torch.autograd.grad(
            layer(x), i, g), calls)
        backward = max(both - forward, 1e-9)
        rows.append({"layer": name, "kind": type(layer).__name__,
                     "in": list(x.shape), "out": list(out.shape), "mflop_forward": flop / 1e6,
                     "forward_ms": forward * 1e3, "backward_ms": backward * 1e3,
                     "forward_gflop_per_s": flop / forward / 1e9,
                     "backward_gflop_per_s": 2 * flop / backward / 1e9})
    return rows


def unfused_optimizers(G: nn.Module, D: nn.Module, train: Any) -> tuple[Any, Any]:
    """`loop.make_optimizers` as it was: Adam with torch's CPU default (unfused)."""
    betas = (train.beta1, train.beta2)
    return (torch.optim.Adam(G.parameters(), lr=train.lr_g, betas=betas),
            torch.optim.Adam(D.parameters(), lr=train.lr_d, betas=betas))


@contextlib.contextmanager
def former_step() -> Iterator[None]:
    """The step as it was before the three changes, in this process only: G's first layer as
    oneDNN's transposed conv, D's parameters' gradients computed in G's phase, Adam unfused."""
    forward, frozen, optimizers = (LatentProjection.forward, steps_module.frozen,
                                   throughput.make_optimizers)
    LatentProjection.forward = nn.ConvTranspose2d.forward  # type: ignore[method-assign]
    steps_module.frozen = lambda model: contextlib.nullcontext()  # type: ignore[assignment]
    throughput.make_optimizers = unfused_optimizers  # what gan_steps calls
    try:
        yield
    finally:
        LatentProjection.forward = forward  # type: ignore[method-assign]
        steps_module.frozen, throughput.make_optimizers = frozen, optimizers


def change_contenders(G: nn.Module, D: nn.Module, params: Params, batch: int,
                      num_classes: int) -> dict[str, dict[str, Callable[[], Any]]]:
    """{change: {"new": fn, "former": fn}}: the shipped code against the code it replaced."""
    gen = torch.Generator().manual_seed(1)
    first = G.net[0]
    x = torch.randn(batch, first.in_channels, 1, 1, generator=gen, requires_grad=True)
    g_first = torch.randn_like(first(x))
    conditional = getattr(D, "num_classes", 0) > 0
    labels = torch.randint(0, num_classes, (batch,), generator=gen) if conditional else None
    with torch.no_grad():
        fake = G(torch.randn(batch, G.latent_dim, generator=gen), labels)
    fake.requires_grad_(True)

    def d_backward(frozen: bool) -> None:
        with steps_module.frozen(D) if frozen else contextlib.nullcontext():
            (D(fake, labels) if conditional else D(fake)).sum().backward()

    opts = {"new": loop.make_optimizers(G, D, params.train),
            "former": unfused_optimizers(G, D, params.train)}
    for p in [*G.parameters(), *D.parameters()]:
        p.grad = torch.randn(p.shape, generator=gen).to(memory_format=(
            torch.channels_last if p.dim() == 4 and not p.is_contiguous() else
            torch.contiguous_format))

    def adam(which: str) -> None:
        for opt in opts[which]:
            opt.step()

    return {
        "g_first_layer": {
            "new": lambda: torch.autograd.grad(first(x), [x, first.weight], g_first),
            "former": lambda: torch.autograd.grad(nn.ConvTranspose2d.forward(first, x),
                                                  [x, first.weight], g_first)},
        "d_in_g_phase": {"new": functools.partial(d_backward, True),
                         "former": functools.partial(d_backward, False)},
        "adam": {"new": functools.partial(adam, "new"),
                 "former": functools.partial(adam, "former")},
    }


def summary(values: list[float], digits: int = 3) -> dict[str, Any]:
    return throughput.summary(values, digits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="rounds (>= 3)")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per step run")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--micro", type=int, default=30, help="calls per micro contender")
    parser.add_argument("--gemm-n", type=int, default=2048)
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "prepared" / "train.npz")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks" / "results" / "step_anatomy.json")
    args = parser.parse_args()
    if args.repeats < 3:
        parser.error("--repeats: at least 3 runs of each contender")
    torch.set_num_threads(THREADS)
    params = load_params(ROOT / "params.yaml")
    batch = params.train.batch_size
    images, labels, source = throughput.load_data(args.data)
    G, D, num_classes = models(params, images, labels)

    gemm = throughput.gemm_rates(args.gemm_n, 10)
    peak = max(gemm.values())
    print(f"GEMM: {', '.join(f'{k} {v:.1f}' for k, v in gemm.items())} GFLOP/s", flush=True)
    layers = layer_table(G, D, batch, num_classes, args.micro)
    total = sum(r["mflop_forward"] for r in layers)
    for r in layers:
        r["share_of_conv_flop"] = r["mflop_forward"] / total
        r["forward_fraction_of_gemm_peak"] = r["forward_gflop_per_s"] / peak
        r["backward_fraction_of_gemm_peak"] = r["backward_gflop_per_s"] / peak
        print(f"{r['layer']:8} {r['kind']:16} {r['mflop_forward']:7.1f} MFLOP  fwd "
              f"{r['forward_ms']:6.2f} ms {r['forward_gflop_per_s']:6.1f} GFLOP/s  bwd "
              f"{r['backward_ms']:6.2f} ms {r['backward_gflop_per_s']:6.1f} GFLOP/s", flush=True)

    changes = change_contenders(G, D, params, batch, num_classes)
    micro: dict[str, dict[str, list[float]]] = {c: {"new": [], "former": []} for c in changes}
    step: dict[str, list[float]] = {"new": [], "former": []}
    for i in range(args.repeats):
        for change, fns in changes.items():
            for which, fn in fns.items():
                micro[change][which].append(seconds(fn, args.micro) * 1e3)
        for which in ("new", "former"):
            with former_step() if which == "former" else contextlib.nullcontext():
                ips = throughput.plain_run(params, images, labels, args.warmup, args.steps,
                                           channels_last=params.train.channels_last)
            step[which].append(ips["images_per_s"])
        print(f"[{i + 1}/{args.repeats}] " + ", ".join(
            f"{c} {m['new'][-1]:.2f} / {m['former'][-1]:.2f} ms" for c, m in micro.items())
            + f"; step {step['new'][-1]:.0f} / {step['former'][-1]:.0f} img/s", flush=True)

    result = {
        "machine": machine(threads=THREADS),
        "command": command_line("step_anatomy.py", sys.argv[1:]),
        "data": source, "model": params.model.model_dump(), "batch": batch,
        "channels_last": params.train.channels_last, "repeats": args.repeats,
        "gemm_gflop_per_s": {k: round(v, 1) for k, v in gemm.items()},
        "layers": [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
                   for r in layers],
        "changes_ms": {c: {"new": summary(m["new"]), "former": summary(m["former"]),
                           "former_over_new": round(statistics.median(m["former"])
                                                    / statistics.median(m["new"]), 2)}
                       for c, m in micro.items()},
        "step_images_per_s": {"new": summary(step["new"], 1),
                              "former": summary(step["former"], 1),
                              "new_over_former": round(statistics.median(step["new"])
                                                       / statistics.median(step["former"]), 3)},
        "how": "micro contenders: the median of --micro calls per round (ms); step: "
               "train_throughput.plain_run (channels_last as params.yaml), images/s over "
               "--steps steps after --warmup; rounds interleave every contender",
    }
    write_json(args.out, result)
    print(f"step: {result['step_images_per_s']['new']['median']} vs "
          f"{result['step_images_per_s']['former']['median']} img/s, "
          f"{result['step_images_per_s']['new_over_former']}x; wrote {args.out}")


if __name__ == "__main__":
    main()
