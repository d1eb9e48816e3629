"""What the projection D's memory layout costs a training step: <E[y], h> summed over a
flattened copy of h (the code before 2026-12-07 13:00) against over h in its own layout (now).

In channels_last, `h.flatten(1)` copies h into NCHW order, so h's gradient comes back NCHW while
the head's comes back channels_last: their sum and LeakyReLU's backward then read two layouts
at once. This runs the plain training loop (`train_throughput.gan_steps`: this process, 2
threads, the default model and batch) with D's forward as it was ("flattened") and as it is
("layout_kept"), in channels_last and in NCHW, interleaved (flattened, layout_kept, ...) for
`--repeats` rounds; and, per layout pair, the time of one `aten::leaky_relu_backward` at the
D's two activation shapes (gradient and activation both channels_last, or one of each).
Medians with min-max, ratios of medians. Writes benchmarks/results/projection_layout.json:

    .venv/bin/python benchmarks/projection_layout.py [--repeats 4 --warmup 10 --steps 120]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline.io import write_json  # noqa: E402
from pipeline.models import dcgan  # noqa: E402

import train_throughput as tt  # noqa: E402  (the sibling benchmark's loop and helpers)

LAYOUT_KEPT = dcgan.Discriminator.forward


def flattened(self: dcgan.Discriminator, x: torch.Tensor,
              labels: torch.Tensor | None = None) -> torch.Tensor:
    """The projection D's forward before the fix (projection only: the default model's)."""
    h = self.net[:-1](x)
    row = self.project(labels).to(h.dtype)
    return self.net[-1](h).flatten() + (row * h.flatten(1)).sum(dim=1)


def leaky_backward_us(shape: tuple[int, ...], grad_cl: bool, repeats: int = 200) -> float:
    """Mean microseconds of one leaky_relu_backward(grad, activation) over `repeats`, the activation
    channels_last, the gradient channels_last or NCHW (2 threads)."""
    torch.set_num_threads(tt.THREADS)
    y = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    g = torch.randn(shape)
    g = g.contiguous(memory_format=torch.channels_last) if grad_cl else g
    for _ in range(5):
        torch.ops.aten.leaky_relu_backward(g, y, 0.2, True)
    t0 = time.perf_counter()
    for _ in range(repeats):
        torch.ops.aten.leaky_relu_backward(g, y, 0.2, True)
    return (time.perf_counter() - t0) / repeats * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--out", type=Path,
                        default=tt.ROOT / "benchmarks" / "results" / "projection_layout.json")
    args = parser.parse_args()
    if args.repeats < 3:
        parser.error("--repeats: at least 3 runs of each contender")
    params = tt.load_params(tt.ROOT / "params.yaml")
    if params.model.d_conditioning != "projection":
        parser.error("params.yaml model.d_conditioning is not projection: nothing to compare")
    images, labels, source = tt.load_data(tt.ROOT / "data" / "prepared" / "train.npz")
    forwards = {"flattened": flattened, "layout_kept": LAYOUT_KEPT}
    result: dict[str, Any] = {"machine": tt.machine(), "data": source,
                              "command": "benchmarks/projection_layout.py" + "".join(
                                  f" {a}" for a in sys.argv[1:]),
                              "global_batch": params.train.batch_size,
                              "warmup_steps": args.warmup, "timed_steps": args.steps,
                              "order": "per layout, interleaved rounds: flattened, layout_kept",
                              "images_per_s": {}, "ratio_layout_kept_over_flattened": {}}
    try:
        for channels_last in (True, False):
            layout = "channels_last" if channels_last else "nchw"
            runs: dict[str, list[float]] = {name: [] for name in forwards}
            for i in range(args.repeats):
                for name, forward in forwards.items():
                    dcgan.Discriminator.forward = forward
                    ips = tt.plain_run(params, images, labels, args.warmup, args.steps,
                                       channels_last)["images_per_s"]
                    runs[name].append(ips)
                    print(f"[{i + 1}/{args.repeats}] {layout} {name}: {ips:.1f} img/s",
                          flush=True)
            result["images_per_s"][layout] = {name: tt.summary(v) for name, v in runs.items()}
            result["ratio_layout_kept_over_flattened"][layout] = round(
                statistics.median(runs["layout_kept"]) / statistics.median(runs["flattened"]), 3)
    finally:
        dcgan.Discriminator.forward = LAYOUT_KEPT
    shapes = [(params.train.batch_size, params.model.d_features, 14, 14),
              (params.train.batch_size, 2 * params.model.d_features, 7, 7)]
    result["leaky_relu_backward_us"] = {
        "x".join(map(str, shape)): {"same_layout": round(leaky_backward_us(shape, True), 1),
                                    "mixed_layouts": round(leaky_backward_us(shape, False), 1)}
        for shape in shapes}
    result["date_end"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    write_json(args.out, result)
    print(result["ratio_layout_kept_over_flattened"], result["leaky_relu_backward_us"])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
