"""`gan-forensics`: the command line over the same functions the DVC stages call.

    gan-forensics fid A B [--features domain|inception] [--n N] [--json]
    gan-forensics detect IMAGE_OR_FOLDER [--model models/detector.pt] [--json]
    gan-forensics sample [--generator models/generator.pt] [--n 64] [--out samples.png]
    gan-forensics submit [--address http://HEAD:8265]
    gan-forensics run-url

A and B are `.npz` files as the stages write them (`images` uint8 NHWC) or image folders.
This is the only module that parses argv.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pipeline.errors import UserError, run_cli

EPILOG = """examples:
  gan-forensics fid data/generated/eval.npz data/prepared/test.npz --n 5000
  gan-forensics fid fakes/ reals/ --features inception --n 200 --json
  gan-forensics detect suspicious.png
  RAY_ADDRESS=http://127.0.0.1:8265 gan-forensics submit
"""


def _cmd_fid(args: argparse.Namespace) -> None:
    from pipeline.data.arrays import load_images_any
    from pipeline.metrics.evaluate import compute_fid

    a, b = load_images_any(Path(args.a)), load_images_any(Path(args.b))
    result = compute_fid(a, b, features=args.features, n=args.n,
                         featurenet_path=Path(args.featurenet), seed=args.seed)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            if key == "kid_std" and value is None:  # one subset, the whole set: no spread
                value = f"n/a (n={result['n']} <= the KID subset size)"
            print(f"{key:>16}  {value:.4f}" if isinstance(value, float) else f"{key:>16}  {value}")


def _cmd_detect(args: argparse.Namespace) -> None:
    from pipeline.data.arrays import load_images_any
    from pipeline.data.images import list_image_files
    from pipeline.detect import score_images

    target = Path(args.target)
    images = load_images_any(target)
    scores = score_images(Path(args.model), images)
    names = ([str(p.relative_to(target)) for p in list_image_files(target)]
             if target.is_dir() else
             [target.name] if len(scores) == 1 else
             [f"{target.name}[{i}]" for i in range(len(scores))])
    rows = [{"image": name, "p_fake": round(float(s), 4), "verdict": "fake" if s >= 0.5
             else "real"} for name, s in zip(names, scores, strict=False)]
    if args.json:
        print(json.dumps(rows))
    else:
        for row in rows:
            print(f"{row['p_fake']:.4f}  {row['verdict']:<4}  {row['image']}")


def _cmd_sample(args: argparse.Namespace) -> None:
    from pipeline.generate import sample_grid

    sample_grid(Path(args.generator), n=args.n, seed=args.seed, out=Path(args.out))
    print(f"wrote {args.out}")


def _cmd_submit(args: argparse.Namespace) -> None:
    from pipeline.cluster import submit_train
    from pipeline.config import load_params
    from pipeline.tracking import tracking_uri

    params = load_params()
    address = args.address or os.environ.get("RAY_ADDRESS") or params.ray.address
    if not address:
        raise UserError("no cluster: pass --address http://HEAD:8265 or set RAY_ADDRESS")
    pulled = submit_train(address, params.ray.storage_path, Path(args.data),
                          tracking_uri(params.mlflow), timeout_s=args.timeout)
    for path in pulled:
        print(f"pulled {path}")
    print("record them for DVC with: dvc commit -f train")


def _cmd_run_url(args: argparse.Namespace) -> None:
    info = json.loads(Path(args.run).read_text()) if Path(args.run).is_file() else None
    if not info:
        raise UserError(f"{args.run}: not found; run the train stage first")
    print(info["ui"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gan-forensics", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train GANs with Ray Train, measure them (FID/KID/precision-recall) and "
        "catch their fakes. The DVC pipeline (`dvc repro`) runs the stages; these commands "
        "reuse the same functions on your own files.", epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fid = sub.add_parser("fid", help="FID and KID between two image sets (.npz or folders)")
    fid.add_argument("a", help=".npz with `images` (uint8 NHWC) or a folder of images "
                     "(PNG, JPEG, WebP, BMP, TIFF, ...)")
    fid.add_argument("b", help="the second set, same form")
    fid.add_argument("--features", choices=["domain", "inception"], default="domain",
                     help="domain = the featurenet stage's CNN; inception = TF-Inception-v3")
    fid.add_argument("--n", type=int, default=None,
                     help="images per set (default: all of the smaller set); never silently less")
    fid.add_argument("--featurenet", default="models/featurenet.pt")
    fid.add_argument("--seed", type=int, default=0)
    fid.add_argument("--json", action="store_true", help="print one JSON object")
    fid.set_defaults(func=_cmd_fid)

    det = sub.add_parser("detect", help="score images with the trained forgery detector")
    det.add_argument("target", help="an image file, a folder of images, or an .npz")
    det.add_argument("--model", default="models/detector.pt")
    det.add_argument("--json", action="store_true")
    det.set_defaults(func=_cmd_detect)

    smp = sub.add_parser("sample", help="write a grid of generated images")
    smp.add_argument("--generator", default="models/generator.pt")
    smp.add_argument("--n", type=int, default=64)
    smp.add_argument("--seed", type=int, default=0)
    smp.add_argument("--out", default="samples.png")
    smp.set_defaults(func=_cmd_sample)

    sbm = sub.add_parser("submit", help="run the train stage on a Ray cluster (make submit)")
    sbm.add_argument("--address", help="Ray dashboard address (default: $RAY_ADDRESS)")
    sbm.add_argument("--data", default="data/prepared/train.npz")
    sbm.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the job")
    sbm.set_defaults(func=_cmd_submit)

    url = sub.add_parser("run-url", help="print the MLflow UI link of the current model's run")
    url.add_argument("--run", default="models/run.json")
    url.set_defaults(func=_cmd_run_url)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run_cli(lambda: args.func(args))


if __name__ == "__main__":
    main(sys.argv[1:])
