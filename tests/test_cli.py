"""`gan-forensics` as a user runs it: the installed entry point in a subprocess, on sklearn's
digits and the `digits_gan` fixture's fakes, with a small detector and FeatureNet trained here.

Every wrong input must end in one true `error: ...` line (exit code 1), a bad flag in the
subcommand's own usage (exit code 2); `detect` must not give a verdict on an image unlike its
training images; `fid` must print the real-vs-real floor and say when N is too small or a KID
is negative. Files are named relative to the working directory, so messages are exact.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import BIN, DigitsGAN

FORMATS = "PNG, JPEG, WebP, BMP, TIFF, GIF, AVIF"
OUTSIDE = "no verdict: pass --resize to score it anyway, flagged as outside the training " \
    "distribution"


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(BIN / "gan-forensics"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)


def load_detector_meta(ws: Path) -> dict:
    from pipeline.detect import load_detector

    return load_detector(ws / "models" / "detector.pt")[1]


def save_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)


@pytest.fixture(scope="module")
def ws(digits_gan: DigitsGAN, tmp_path_factory) -> Path:
    """A working directory with models/detector.pt and models/featurenet.pt (28x28 gray, the
    CLI's defaults) and the user files of the cases below."""
    import torch

    from pipeline.detect import predict, save_detector
    from pipeline.detect.scores import calibrate_threshold
    from pipeline.detect.train import TrainSpec, train_attributor
    from pipeline.metrics.featurenet import save_featurenet, train_featurenet

    root = tmp_path_factory.mktemp("cli")
    images, labels = digits_gan.images, digits_gan.labels  # (1797, 28, 28, 1)
    reals = images[:400]  # rows G never trained on
    fakes = digits_gan.fakes(400, seed=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: one thread is the fast setting
    try:
        # The shipped kind: real vs two families, the trained G ("dcgan") and the same G
        # untrained ("blobs"), its threshold calibrated on held-out images.
        blobs = digits_gan.fakes(300, seed=2, trained=False)
        det = train_attributor([reals[:200], fakes[:100], blobs[:100]],
                               TrainSpec(epochs=4, batch_size=32, lr=2e-3, width=8))
        held_real, held_fake = images[1700:1797], np.r_[fakes[100:150], blobs[100:150]]
        threshold = calibrate_threshold(
            np.r_[np.zeros(len(held_real)), np.ones(len(held_fake))],
            np.r_[predict(det, held_real), predict(det, held_fake)])
        save_detector(root / "models/detector.pt", det, 8, ["real", "dcgan", "blobs"],
                      threshold, (1, 28, 28))
        net, _ = train_featurenet((images[400:1300], labels[400:1300]),
                                  (images[1300:1500], labels[1300:1500]), 10, width=8,
                                  epochs=2, batch_size=64, lr=3e-3, seed=0, log=lambda _: None)
        save_featurenet(root / "models/featurenet.pt", net, {"width": 8}, (28, 28, 1), 0.0)
    finally:
        torch.set_num_threads(threads)

    np.savez(root / "fake.npz", images=fakes[200:400])
    np.savez(root / "real.npz", images=reals[200:400])
    np.savez(root / "real_b.npz", images=images[1500:1700])
    np.savez(root / "few_fake.npz", images=fakes[200:220])
    np.savez(root / "few_real.npz", images=reals[200:220])
    np.savez(root / "more_real.npz", images=images[1700:1797])
    np.savez(root / "small16.npz", images=np.zeros((30, 16, 16, 1), np.uint8))
    np.savez(root / "tiny8.npz", images=np.zeros((30, 8, 8, 1), np.uint8))
    np.savez(root / "objects.npz", images=np.array([{"a": 1}], dtype=object))
    np.save(root / "photo.npy", reals[:2])
    (root / "notes.txt").write_text("suspicious images: see folder\n")
    (root / "text.npz").write_text("not really an archive\n")
    (root / "empty.npz").write_bytes(b"")
    (root / "scores.pkl").write_bytes(pickle.dumps({"p_fake": [0.1]}))
    with zipfile.ZipFile(root / "photos.zip", "w") as z:
        z.writestr("notes.txt", "not an array")
    noise = np.random.default_rng(0).integers(0, 256, (80, 100, 3), dtype=np.uint8)
    save_png(root / "noise.png", noise[..., :1])  # 100 wide, 80 tall, gray
    save_png(root / "tiny.png", noise[:4, :4, :1])
    save_png(root / "colour.png", noise[:28, :28])
    for i in range(3):  # held-out reals (rows 300-399: the detector never saw them), new fakes
        save_png(root / f"suspects/fake{i}.png", fakes[300 + i])
        save_png(root / f"suspects/real{i}.png", reals[300 + i])
    save_png(root / "suspects/real_rgb.png", np.repeat(reals[300], 3, axis=-1))  # gray as RGB
    save_png(root / "mixed/real0.png", reals[300])
    save_png(root / "mixed/noise.png", noise[..., :1])
    save_png(root / "mixed/zz_colour.png", noise[:28, :28])
    (root / "fresh").mkdir()  # a checkout where `dvc repro` has not run: no models/
    save_png(root / "fresh/digit.png", reals[300])
    np.savez(root / "fresh/a.npz", images=reals[:40])
    return root


# (args, working directory under ws or "", the exact stderr line)
ERRORS = {
    "txt to detect": (["detect", "notes.txt"], "", "notes.txt: not an .npz archive, an image "
                      "or a folder, but plain text; give an .npz with an `images` array, an "
                      f"image file ({FORMATS}) or a folder of them"),
    "txt to fid": (["fid", "notes.txt", "real.npz"], "", "notes.txt: not an .npz archive, an "
                   "image or a folder, but plain text; give an .npz with an `images` array, an "
                   f"image file ({FORMATS}) or a folder of them"),
    "text named .npz": (["fid", "fake.npz", "text.npz"], "", "text.npz: not an .npz archive, "
                        "an image or a folder, but plain text; give an .npz with an `images` "
                        f"array, an image file ({FORMATS}) or a folder of them"),
    "empty .npz": (["detect", "empty.npz"], "", "empty.npz: not an .npz archive, an image or "
                   "a folder, but an empty file (0 bytes); give an .npz with an `images` "
                   f"array, an image file ({FORMATS}) or a folder of them"),
    ".npy": (["detect", "photo.npy"], "", "photo.npy: not an .npz archive, an image or a "
             "folder, but a single .npy array (save it with np.savez(path, images=a)); give "
             f"an .npz with an `images` array, an image file ({FORMATS}) or a folder of them"),
    "pickle": (["fid", "scores.pkl", "real.npz"], "", "scores.pkl: not an .npz archive, an "
               "image or a folder, but a Python pickle, never loaded: unpickling can run code; "
               f"give an .npz with an `images` array, an image file ({FORMATS}) or a folder of "
               "them"),
    "zip, not npz": (["detect", "photos.zip"], "", "photos.zip: member 'notes.txt' is not a "
                     ".npy array: a zip archive, but not one np.savez wrote"),
    "object array": (["detect", "objects.npz"], "", "objects.npz: array 'images' holds Python "
                     "objects (pickled data), which are never loaded: they can run code; save "
                     "plain numeric arrays"),
    "missing image": (["detect", "missing.png"], "", "missing.png: no such file or folder"),
    "missing npz": (["fid", "missing.npz", "real.npz"], "", "missing.npz: no such file or "
                    "folder"),
    "missing floor-ref": (["fid", "fake.npz", "real.npz", "--floor-ref", "gone/"], "",
                          "gone: no such file or folder"),
    "missing --model": (["detect", "real.npz", "--model", "mine.pt"], "",
                        "mine.pt: no such file (--model, a detector checkpoint)"),
    "missing --featurenet": (["fid", "fake.npz", "real.npz", "--featurenet", "fn.pt"], "",
                             "fn.pt: no such file (--featurenet, a FeatureNet checkpoint)"),
    "missing --generator": (["sample", "--generator", "g.pt"], "",
                            "g.pt: no such file (--generator, a generator checkpoint)"),
    "missing --run": (["run-url", "--run", "r.json"], "", "r.json: no such file"),
    "no detector yet": (["detect", "digit.png"], "fresh", "models/detector.pt: detector not "
                        "found (run the detect stage: dvc repro detect)"),
    "no featurenet yet": (["fid", "a.npz", "a.npz"], "fresh", "models/featurenet.pt: "
                          "FeatureNet checkpoint not found (run the featurenet stage: dvc "
                          "repro featurenet)"),
    "detect: wrong size": (["detect", "noise.png"], "", "noise.png: 100x80 gray is outside "
                           f"what the detector was trained on (28x28 gray); {OUTSIDE}"),
    "detect: wrong channels": (["detect", "colour.png"], "", "colour.png: 28x28 RGB is "
                               "outside what the detector was trained on (28x28 gray); "
                               f"{OUTSIDE}"),
    "detect: some of a folder": (["detect", "mixed"], "", "2 of 3 images are outside what the "
                                 "detector was trained on (28x28 gray), first mixed/noise.png "
                                 "(100x80 gray); no verdict: pass --resize to score them "
                                 "anyway, flagged as outside the training distribution"),
    "detect: too small": (["detect", "tiny.png", "--resize"], "", "tiny.png: 4x4 gray is "
                          "smaller than the 28x28 gray images the detector was trained on; "
                          "upscaling cannot restore the pixel-level traces it looks for"),
    "fid: sizes differ": (["fid", "fake.npz", "small16.npz"], "", "fake.npz: images are 28x28 "
                          "gray, small16.npz 16x16 gray; FID compares sets of one image size"),
    "fid: not the featurenet's size": (["fid", "small16.npz", "small16.npz"], "",
                                       "small16.npz: images are 16x16 gray, the domain feature "
                                       "net (models/featurenet.pt) was trained on 28x28 gray; "
                                       "resize them to that, or use the inception features"),
    "fid: too small for inception": (["fid", "tiny8.npz", "tiny8.npz", "--features",
                                      "inception"], "", "tiny8.npz: images are 8x8 gray, too "
                                     "small for Inception features (under 16 px a side they "
                                     "are upscaled over 18x to 299 px)"),
    "fid: n above a set": (["fid", "few_fake.npz", "real.npz", "--n", "25"], "",
                           "few_fake.npz: 20 images, fewer than n=25"),
}


@pytest.mark.parametrize("case", ERRORS)
def test_a_wrong_input_is_one_true_line(ws: Path, case: str) -> None:
    args, cwd, message = ERRORS[case]
    done = cli(ws / cwd, *args)
    assert (done.returncode, done.stderr, done.stdout) == (1, f"error: {message}\n", "")
    assert "pickle=" not in done.stderr  # never numpy's `allow_pickle=` advice
    if cwd != "fresh":  # a missing user file is not the pipeline's to make
        assert "dvc repro" not in done.stderr


# (args, the subcommand's usage line start, the error line)
BAD_FLAGS = {
    "unknown detect flag": (["detect", "real.npz", "--bogus"],
                            "usage: gan-forensics detect [-h] [--model MODEL]",
                            "gan-forensics detect: error: unrecognized arguments: --bogus"),
    "unknown fid flag": (["fid", "a.npz", "b.npz", "--treshold", "3"],
                         "usage: gan-forensics fid [-h] [--features {domain,inception}]",
                         "gan-forensics fid: error: unrecognized arguments: --treshold 3"),
    "fid --n too small": (["fid", "a.npz", "b.npz", "--n", "1"], "usage: gan-forensics fid",
                          "gan-forensics fid: error: argument --n: must be at least 2, got 1"),
    "fid --n not a number": (["fid", "a.npz", "b.npz", "--n", "1e3"],
                             "usage: gan-forensics fid", "gan-forensics fid: error: argument "
                             "--n: not a whole number: '1e3'"),
    "fid --features": (["fid", "a.npz", "b.npz", "--features", "clip"],
                       "usage: gan-forensics fid", "gan-forensics fid: error: argument "
                       "--features: invalid choice: 'clip' (choose from 'domain', "
                       "'inception')"),
    "detect without a target": (["detect"], "usage: gan-forensics detect",
                                "gan-forensics detect: error: the following arguments are "
                                "required: target"),
    "sample --n 0": (["sample", "--n", "0"], "usage: gan-forensics sample",
                     "gan-forensics sample: error: argument --n: must be at least 1, got 0"),
    "submit --timeout": (["submit", "--timeout", "-5"], "usage: gan-forensics submit",
                         "gan-forensics submit: error: argument --timeout: must be > 0, got -5"),
    "top-level flag": (["--bogus", "fid", "a.npz", "b.npz"], "usage: gan-forensics [-h] COMMAND",
                       "gan-forensics: error: unrecognized arguments: --bogus"),
}


@pytest.mark.parametrize("case", BAD_FLAGS)
def test_a_bad_flag_prints_that_subcommands_usage(ws: Path, case: str) -> None:
    args, usage, message = BAD_FLAGS[case]
    done = cli(ws, *args)
    lines = done.stderr.splitlines()
    assert done.returncode == 2 and done.stdout == ""
    assert lines[0].startswith(usage) and lines[-1] == message, done.stderr


def help_blocks(text: str) -> dict[str, str]:
    """`--flag ...` -> its whole help text, from argparse's option listing."""
    blocks: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"  (-[-\w]+)", line)
        if m:
            current = m.group(1)
            blocks[current] = line
        elif current and line.startswith("    "):
            blocks[current] += " " + line.strip()
        else:
            current = None
    return {flag: " ".join(block.split()) for flag, block in blocks.items()}


def test_every_flag_has_help_text_and_shows_its_default(ws: Path) -> None:
    from pipeline.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == {"fid", "detect", "sample", "submit", "run-url"}
    for name, parser in sub.choices.items():
        done = cli(ws, name, "--help")
        assert done.returncode == 0 and done.stdout.startswith(f"usage: gan-forensics {name}")
        blocks = help_blocks(done.stdout)
        flags = [a.option_strings[0] for a in parser._actions if a.option_strings
                 and a.dest != "help"]
        assert flags, name
        for flag in flags:
            assert re.search(r"\(default: [^)]+\)", blocks[flag]), (name, blocks[flag])
    fid = help_blocks(cli(ws, "fid", "--help").stdout)
    assert fid["--featurenet"].endswith("(default: models/featurenet.pt)")
    assert fid["--json"].endswith("(default: off)")
    assert "(default: models/detector.pt)" in help_blocks(cli(ws, "detect", "-h").stdout)[
        "--model"]


def test_detect_scores_images_like_its_training_images(ws: Path) -> None:
    done = cli(ws, "detect", "suspects", "--json")
    assert done.returncode == 0 and done.stderr == "", done.stderr  # no Python warnings
    rows = {r["image"]: r for r in json.loads(done.stdout)}
    assert sorted(rows) == ["fake0.png", "fake1.png", "fake2.png", "real0.png", "real1.png",
                            "real2.png", "real_rgb.png"]
    assert all(r["in_distribution"] and r["note"] is None for r in rows.values())
    fake = [rows[f"fake{i}.png"]["p_fake"] for i in range(3)]
    real = [rows[n]["p_fake"] for n in rows if n.startswith("real")]
    assert min(fake) > max(real), rows  # the GAN's fakes rank above held-out real digits
    assert rows["real_rgb.png"]["p_fake"] == rows["real0.png"]["p_fake"]  # gray saved as RGB
    # The likeliest source of the GAN's fakes is the GAN's family, not the blobs.
    assert {rows[f"fake{i}.png"]["source"] for i in range(3)} == {"dcgan"}, rows
    assert all(0.5 <= rows[f"fake{i}.png"]["p_source"] <= 1 for i in range(3))
    threshold = float(load_detector_meta(ws)["config"]["threshold"])
    assert [r["verdict"] for r in rows.values()] == \
        ["fake" if r["p_fake"] >= threshold else "real" for r in rows.values()]
    text = cli(ws, "detect", "suspects/fake0.png")
    row = rows["fake0.png"]
    assert (text.returncode, text.stderr) == (0, "")
    header, line = text.stdout.splitlines()
    assert header.startswith("p_fake  verdict  source") and f"{threshold:.4f}" in header
    assert line.split() == [f"{fake[0]:.4f}", row["verdict"], "dcgan",
                            f"{row['p_source']:.4f}", "fake0.png"]


def test_detect_resize_flags_what_is_outside_the_training_distribution(ws: Path) -> None:
    done = cli(ws, "detect", "mixed", "--resize", "--json")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    rows = {r["image"]: r for r in json.loads(done.stdout)}
    assert rows["real0.png"]["in_distribution"] and rows["real0.png"]["note"] is None
    assert not rows["noise.png"]["in_distribution"]
    assert rows["noise.png"]["note"] == ("outside the training distribution (100x80 gray; the "
                                         "detector was trained on 28x28 gray): resized, score "
                                         "unreliable")
    assert rows["zz_colour.png"]["note"] == ("outside the training distribution (28x28 RGB; "
                                             "the detector was trained on 28x28 gray): "
                                             "converted to gray, score unreliable")
    text = cli(ws, "detect", "noise.png", "--resize")
    assert (text.returncode, text.stderr) == (0, "")
    row = rows["noise.png"]
    assert text.stdout.splitlines()[1].endswith(
        f"{row['p_fake']:.4f}  {row['verdict']:<7}  {row['source']:<14}{row['p_source']:>8.4f}"
        "  noise.png  [outside the training distribution (100x80 gray; the detector was "
        "trained on 28x28 gray): resized, score unreliable]")


def test_fid_prints_the_real_vs_real_floor_at_the_same_n(ws: Path) -> None:
    done = cli(ws, "fid", "fake.npz", "real.npz", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    # Default N: all 200 fakes, but B has 200 reals and the floor needs two disjoint samples.
    assert (out["name"], out["n"], out["feature_dim"]) == ("fid_domain_100", 100, 32)
    assert out["floor"] == "two disjoint samples of 100 from real.npz"
    assert 0 < out["fid_floor"] < out["fid"]  # fakes of a 6-epoch GAN are above real-vs-real
    assert out["kid_mean"] > 0  # no warning about N (100 >= 32 dims) or the floor; the only
    # caveat possible is the floor's KID below 0 (real vs real: a true value of 0 plus noise)
    assert out["warnings"] == ([f"negative KID (kid_floor_mean {out['kid_floor_mean']:.3g}): "
                                "KID is an unbiased estimate of a squared distance, so sampling "
                                "noise at this N can push it below 0; it means no difference "
                                "was measurable, read it as 0"] if out["kid_floor_mean"] < 0
                               else [])
    assert done.stderr == "".join(f"warning: {w}\n" for w in out["warnings"])
    real = json.loads(cli(ws, "fid", "real_b.npz", "real.npz", "--json").stdout)
    assert real["fid"] < 2 * real["fid_floor"]  # real vs real is at the floor
    assert real["fid_floor"] == out["fid_floor"]  # the same seeded real samples
    text = cli(ws, "fid", "fake.npz", "real.npz", "--n", "100").stdout.splitlines()
    assert text[:3] == ["            name  fid_domain_100", "        features  domain (32 dims)",
                        "               n  100"]
    assert text[3] == f"             fid  {out['fid']:.4f}"
    assert text[4] == f"       fid_floor  {out['fid_floor']:.4f}"
    assert text[-1] == "           floor  real vs real: two disjoint samples of 100 from real.npz"


def test_fid_on_few_images_warns_and_explains_a_negative_kid(ws: Path) -> None:
    # The case: 20 images. A is B here, so KID's unbiased estimate falls below 0.
    done = cli(ws, "fid", "few_real.npz", "few_real.npz")
    assert done.returncode == 0, done.stderr
    warnings = done.stderr.splitlines()
    assert warnings[0] == ("warning: N=10 is below the 32 feature dimensions: the covariance "
                           "FID uses is rank-deficient and small-sample bias dominates (use "
                           "N >= 32); compare only FIDs at the same N, beside their floor")
    assert re.fullmatch(r"warning: negative KID \(kid_mean -[\d.e-]+(, kid_floor_mean "
                        r"-[\d.e-]+)?\): KID is an unbiased estimate of a squared distance, so "
                        r"sampling noise at this N can push it below 0; it means no difference "
                        r"was measurable, read it as 0", warnings[1]), warnings
    assert len(warnings) == 2
    rows = dict(line.split(None, 1) for line in done.stdout.splitlines())
    assert rows["n"] == "10" and rows["fid"] == "0.0000"  # the same 10 images
    assert re.fullmatch(r"-[\d.]+  \(negative: no measurable difference, read as 0\)",
                        rows["kid_mean"])
    assert float(rows["fid_floor"]) > 0
    # At all 20, B has no second sample of 20: no floor, and the way to get one.
    done = cli(ws, "fid", "few_fake.npz", "few_real.npz", "--n", "20", "--json")
    out = json.loads(done.stdout)
    assert out["fid_floor"] is None and out["floor"] is None
    no_floor = ("no real-vs-real floor: few_real.npz has 20 images and a floor needs 2N=40 (two "
                "disjoint real samples of 20); lower --n to 10 or add real images with "
                "--floor-ref")
    assert out["warnings"][0] == no_floor
    assert done.stderr.splitlines()[0] == f"warning: {no_floor}"
    text = cli(ws, "fid", "few_fake.npz", "few_real.npz", "--n", "20").stdout
    assert "       fid_floor  n/a (no floor; see the warning)\n" in text
    asked = cli(ws, "fid", "few_fake.npz", "few_real.npz", "--n", "20", "--no-floor")
    assert "       fid_floor  n/a (--no-floor)\n" in asked.stdout
    assert "no real-vs-real floor" not in asked.stderr  # the user asked for none
    # --floor-ref completes the floor's second sample from more real images.
    out = json.loads(cli(ws, "fid", "few_fake.npz", "few_real.npz", "--n", "20", "--floor-ref",
                         "more_real.npz", "--json").stdout)
    assert out["floor"] == "two disjoint samples of 20 from few_real.npz + more_real.npz"
    assert out["fid_floor"] > 0 and not any(w.startswith("no real-vs-real floor")
                                            for w in out["warnings"])
