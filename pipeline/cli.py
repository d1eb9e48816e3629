"""`gan-forensics`: the command line over the same functions the DVC stages call.

    gan-forensics fid A B [--features domain|inception] [--n N] [--floor-ref REAL] [--json]
    gan-forensics detect IMAGE_OR_FOLDER [--model models/detector.pt] [--resize] [--json]
    gan-forensics sample [--generator models/dcgan/generator.pt] [--n 64] [--out samples.png]
    gan-forensics submit [--address http://HEAD:8265] [--family dcgan]
    gan-forensics run-url

A and B are `.npz` files as the stages write them (`images` uint8 NHWC), image files or image
folders. Every mistake is one line `error: ...` and exit code 1 (a bad flag: exit code 2 and the
subcommand's usage); caveats are `warning: ...` lines on stderr, never a Python warning dump.
This is the only module that parses argv.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.errors import UserError, run_cli

EPILOG = """examples:
  gan-forensics fid data/generated/dcgan/eval.npz data/prepared/test.npz --n 5000
  gan-forensics fid fakes/ reals/ --features inception --n 2048 --floor-ref more_reals/
  gan-forensics detect suspicious.png
  RAY_ADDRESS=http://127.0.0.1:8265 gan-forensics submit
"""
DETECTOR, FEATURENET, GENERATOR = ("models/detector.pt", "models/featurenet.pt",
                                   "models/dcgan/generator.pt")
RUN = "models/dcgan/run.json"  # the default model's MLflow run (train@dcgan)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless it already says it ("default: ...")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or "default" in text or action.default is argparse.SUPPRESS:
            return text
        if action.nargs == 0:  # an on/off flag
            return f"{text} (default: {'on' if action.default else 'off'})"
        return f"{text} (default: %(default)s)"


class _TopFormatter(argparse.RawDescriptionHelpFormatter, _Formatter):
    """The top-level help: the examples epilog kept as written."""


class _SubcommandParser(argparse.ArgumentParser):
    """A subcommand's parser: an unknown flag is reported with THIS subcommand's usage (plain
    argparse hands it up to the top-level parser, whose usage lists only the commands)."""

    def parse_known_args(self, args: Sequence[str] | None = None,
                         namespace: argparse.Namespace | None = None
                         ) -> tuple[argparse.Namespace, list[str]]:
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= minimum."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _user_file(path: str, default: str, what: str) -> Path:
    """A path the user gave must exist. A missing default is a pipeline output that is not
    made yet: its loader's message says which `dvc repro` stage makes it."""
    if path != default and not Path(path).exists():
        raise UserError(f"{path}: no such file ({what})")
    return Path(path)


def _cmd_fid(args: argparse.Namespace) -> None:
    from pipeline.data.arrays import load_images_any

    a, b = load_images_any(args.a), load_images_any(args.b)  # bad files fail before torch loads
    extra = load_images_any(args.floor_ref) if args.floor_ref else None
    featurenet = (_user_file(args.featurenet, FEATURENET, "--featurenet, a FeatureNet "
                             "checkpoint") if args.features == "domain" else None)
    from pipeline.metrics.evaluate import compute_fid

    result = compute_fid(a, b, features=args.features, n=args.n, featurenet_path=featurenet,
                         seed=args.seed, floor=not args.no_floor, floor_images=extra,
                         names=(args.a, args.b, args.floor_ref or "--floor-ref"))
    for line in result["warnings"]:
        print(f"warning: {line}", file=sys.stderr)
    if args.json:
        print(json.dumps(result))
        return
    whole = f"n/a (n={result['n']} <= the KID subset size)"  # one subset, the whole set
    rows = [("name", result["name"]),
            ("features", f"{result['features']} ({result['feature_dim']} dims)"),
            ("n", result["n"]), ("fid", result["fid"]),
            ("fid_floor", result["fid_floor"]), ("kid_mean", result["kid_mean"]),
            ("kid_std", whole if result["kid_std"] is None else result["kid_std"])]
    if result["floor"]:
        rows += [("kid_floor_mean", result["kid_floor_mean"]),
                 ("kid_floor_std", whole if result["kid_floor_std"] is None
                  else result["kid_floor_std"]),
                 ("floor", f"real vs real: {result['floor']}")]
    for key, value in rows:
        if value is None:
            value = "n/a (--no-floor)" if args.no_floor else "n/a (no floor; see the warning)"
        elif isinstance(value, float):
            value = f"{value:.4f}" + ("  (negative: no measurable difference, read as 0)"
                                      if key.startswith("kid") and value < 0 else "")
        print(f"{key:>16}  {value}")


def _cmd_detect(args: argparse.Namespace) -> None:
    from pipeline.data.arrays import check_user_path, describe_shape, load_for_model

    check_user_path(args.target)  # a missing or wrong file fails before torch loads
    detector = _user_file(args.model, DETECTOR, "--model, a detector checkpoint")
    import numpy as np

    from pipeline.detect import class_probs, load_detector

    model, meta = load_detector(detector)
    c, h, w = meta["image_shape"]
    got = load_for_model(args.target, (h, w, c), "the detector", resize=args.resize)
    if got.outside:  # refuse rather than give a confident verdict on what it never saw
        trained, k = describe_shape(h, w, c), len(got.outside)
        (where, own), total = got.outside[0], k + len(got.names)
        which = (f"{where}: {own} is" if total == 1 else
                 f"{k} of {total} images {'is' if k == 1 else 'are'}")
        first = "" if total == 1 else f", first {where} ({own})"
        raise UserError(f"{which} outside what the detector was trained on ({trained}){first}; "
                        f"no verdict: pass --resize to score {'it' if k == 1 else 'them'} "
                        "anyway, flagged as outside the training distribution")
    classes, threshold = meta["config"]["classes"], float(meta["config"]["threshold"])
    probs = class_probs(model, got.images)  # (N, K): real, then each family
    rows = []
    for name, p, note in zip(got.names, probs, got.notes, strict=True):
        p_fake = float(1.0 - p[0])
        k = int(np.argmax(p[1:])) + 1  # the likeliest family; its probability given a fake
        rows.append({"image": name, "p_fake": round(p_fake, 4),
                     "verdict": "fake" if p_fake >= threshold else "real",
                     "source": classes[k], "p_source": round(float(p[k] / max(p_fake, 1e-12)), 4),
                     "in_distribution": note is None, "note": note})
    if args.json:
        print(json.dumps(rows))
        return
    print(f"{'p_fake':>6}  verdict  {'source':<14}{'p_source':>8}  image   (fake when p_fake >= "
          f"{threshold:.4f}, calibrated on validation)")
    for row in rows:
        note = f"  [{row['note']}]" if row["note"] else ""
        print(f"{row['p_fake']:.4f}  {row['verdict']:<7}  {row['source']:<14}"
              f"{row['p_source']:>8.4f}  {row['image']}{note}")


def _cmd_sample(args: argparse.Namespace) -> None:
    from pipeline.generate import sample_grid

    generator = _user_file(args.generator, GENERATOR, "--generator, a generator checkpoint")
    sample_grid(generator, n=args.n, seed=args.seed, out=Path(args.out))
    print(f"wrote {args.out}")


def _cmd_submit(args: argparse.Namespace) -> None:
    from pipeline.cluster import submit_train
    from pipeline.config import load_params
    from pipeline.tracking import tracking_uri

    params = load_params()
    address = args.address or os.environ.get("RAY_ADDRESS") or params.ray.address
    if not address:
        raise UserError("no cluster: pass --address http://HEAD:8265 or set RAY_ADDRESS")
    if args.family not in params.zoo:
        raise UserError(f"--family: no zoo family {args.family!r} in params.yaml (valid: "
                        f"{', '.join(params.zoo)})")
    pulled = submit_train(address, params.ray.storage_path, Path(args.data),
                          tracking_uri(params.mlflow), timeout_s=args.timeout,
                          family=args.family)
    for path in pulled:
        print(f"pulled {path}")
    print(f"record them for DVC with: dvc commit -f train@{args.family}")


def _cmd_run_url(args: argparse.Namespace) -> None:
    if not Path(args.run).is_file():
        raise UserError(f"{args.run}: not found; run the train stage first (dvc repro "
                        "train@dcgan)" if args.run == RUN else f"{args.run}: no such file")
    info = json.loads(Path(args.run).read_text())
    print(info["ui"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gan-forensics", formatter_class=_TopFormatter,
        description="Train GANs with Ray Train, measure them (FID/KID/precision-recall) and "
        "catch their fakes. The DVC pipeline (`dvc repro`) runs the stages; these commands "
        "reuse the same functions on your own files.", epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_SubcommandParser)

    def command(name: str, help: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=description,
                              formatter_class=_Formatter)

    fid = command("fid", "FID and KID of images A against real images B, beside the "
                  "real-vs-real floor", "FID and KID of A (e.g. generated images) against the "
                  "real images B, printed beside the real-vs-real floor at the same N: the FID "
                  "of two disjoint real samples (from B, or B plus --floor-ref). FID depends on "
                  "N, so compare numbers only at one N, each against its floor. A warning "
                  "marks N below the feature dimension (2048 for Inception, 4 x width for the "
                  "domain features: 128 with the default FeatureNet).")
    fid.add_argument("a", metavar="A", help="the images to judge: an .npz with `images` "
                     "(uint8 NHWC), an image file or a folder of images (PNG, JPEG, WebP, BMP, "
                     "TIFF, GIF, AVIF)")
    fid.add_argument("b", metavar="B", help="the real reference images, same forms; the "
                     "floor's two real samples are drawn from it")
    fid.add_argument("--features", choices=["domain", "inception"], default="domain",
                     help="domain = the featurenet stage's CNN (images of its training size); "
                     "inception = TF-Inception-v3 (any size from 16 px)")
    fid.add_argument("--n", type=_at_least(2), default=None,
                     help="images per set (default: all of A, up to half of the real images "
                     "so the floor has its second sample); a larger N than a set has is an "
                     "error, never silently less")
    fid.add_argument("--floor-ref", default=None, metavar="REAL",
                     help="more real images, disjoint from B, to complete the floor's second "
                     "sample when B has fewer than 2N (default: none, B only)")
    fid.add_argument("--no-floor", action="store_true",
                     help="skip the real-vs-real floor (a third less feature extraction)")
    fid.add_argument("--featurenet", default=FEATURENET,
                     help="the domain feature net checkpoint (made by `dvc repro featurenet`)")
    fid.add_argument("--seed", type=int, default=0, help="seed of the sample draws and KID "
                     "subsets")
    fid.add_argument("--json", action="store_true", help="print one JSON object (with "
                     "`warnings`) instead of the table")
    fid.set_defaults(func=_cmd_fid)

    det = command("detect", "score images with the trained forgery detector",
                  "P(fake) of each image from the shipped detector, its verdict at the "
                  "threshold calibrated on validation, and the zoo family that most likely "
                  "made it (p_source: that family's probability given a fake). An image of "
                  "another size or channel count than the detector's training images gets no "
                  "verdict unless --resize is given, and then its score is flagged as outside "
                  "the training distribution; an image smaller than them is always refused.")
    det.add_argument("target", help="an image file, a folder of images, or an .npz with "
                     "`images`")
    det.add_argument("--model", default=DETECTOR,
                     help="the detector checkpoint (made by `dvc repro detect`)")
    det.add_argument("--resize", action="store_true",
                     help="score images of another size/channels anyway: shrink and centre-crop "
                     "them to the training size, flagged `in_distribution: false`")
    det.add_argument("--json", action="store_true", help="print a JSON list of {image, p_fake, "
                     "verdict, source, p_source, in_distribution, note}")
    det.set_defaults(func=_cmd_detect)

    smp = command("sample", "write a grid of generated images",
                  "Sample the generator and write one PNG grid.")
    smp.add_argument("--generator", default=GENERATOR,
                     help="the generator checkpoint (made by `dvc repro train@dcgan`)")
    smp.add_argument("--n", type=_at_least(1), default=64, help="images in the grid")
    smp.add_argument("--seed", type=int, default=0, help="seed of the latent draws")
    smp.add_argument("--out", default="samples.png", help="PNG file to write")
    smp.set_defaults(func=_cmd_sample)

    sbm = command("submit", "run the train stage on a Ray cluster (make submit)",
                  "Submit the train stage as a Ray job and pull its outputs back.")
    sbm.add_argument("--address", default=None, help="Ray dashboard address (default: "
                     "$RAY_ADDRESS, then params.yaml ray.address)")
    sbm.add_argument("--data", default="data/prepared/train.npz", help="the prepared "
                     "training set to ship")
    sbm.add_argument("--family", default="dcgan", help="the zoo family to train (params.yaml "
                     "zoo)")
    sbm.add_argument("--timeout", type=_positive_seconds, default=3600.0,
                     help="seconds to wait for the job")
    sbm.set_defaults(func=_cmd_submit)

    url = command("run-url", "print the MLflow UI link of the current model's run",
                  "Print the MLflow UI link recorded by the train stage.")
    url.add_argument("--run", default=RUN, help="the train stage's run record")
    url.set_defaults(func=_cmd_run_url)
    return parser


def _warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: object = None, line: str | None = None) -> None:
    """Library warnings as one `warning: ...` line, not Python's source-line dump."""
    print(f"warning: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _warning_line
        run_cli(lambda: args.func(args))


if __name__ == "__main__":
    main(sys.argv[1:])
