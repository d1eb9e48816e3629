"""Which forensic recipe, measured on the pipeline's own images: (1) the crossgen probe's
feature sets, by leave-one-out mean AP / calibrated accuracy and attribution accuracy; (2) the
shipped detector's training (epochs, Blur+JPEG probability, the blur's largest sigma, seed, the
learning-rate schedule), by its AP clean and under blur sigma 1 and JPEG q 75.

    dvc repro generate featurenet     # data/generated/<family>/, models/featurenet.pt
    .venv/bin/python benchmarks/forensics_ablation.py [--skip-probe] [--skip-detector] [--force]

(1) runs `pipeline.forensics.crossgen.run_crossgen` with params.yaml's crossgen sets, the probe
as detector and attributor, per feature set (robustness of the already shipped detector,
models/detector.pt, which (1) does not compare). (2) trains the detect stage's network on the
detect stage's sets (`load_detect_data`, `detect.num_train`, every zoo family) per variant and
scores it with `robustness_table` on crossgen's robustness test set (real test vs the crossgen
families' test fakes, the same images as metrics/crossgen.json's `robustness`), in the order
of DETECTOR_VARIANTS (interleaved, so a drift of the host's speed touches each alike). Each row
names the images it was measured on (`images`: the md5 of data/generated in dvc.lock's detect
stage; "unrecorded" for rows older than that key). Training is deterministic on one machine, so
a variant already in the JSON for the same images is kept with its date and not retrained,
unless --force; rows of other images stay as they were (history), and so does a skipped section.
Writes benchmarks/results/forensics_ablation.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
FEATURE_SETS = [("histogram",), ("featurenet",), ("spectrum",), ("cooccurrence",),
                ("histogram", "featurenet"), ("histogram", "spectrum"),
                ("featurenet", "spectrum"), ("histogram", "featurenet", "spectrum"),
                ("histogram", "featurenet", "cooccurrence"),
                ("histogram", "featurenet", "spectrum", "cooccurrence")]
# (aug_prob, epochs, blur_max: sigma ~ U[0, blur_max], seed, lr_schedule), measured on the
# current images; the JSON keeps the rows of earlier comparisons (p, epochs, blur_max) too.
DETECTOR_VARIANTS = [
    *[(0.5, 6, 1.5, seed, schedule) for seed in (0, 1, 2) for schedule in ("constant", "cosine")],
    *[(p, epochs, 1.5, seed, "cosine") for seed in (0, 1, 2)
      for p, epochs in ((0.8, 6), (0.5, 10))],
]
VARIANT_KEYS = ("aug_prob", "epochs", "blur_max", "seed", "lr_schedule", "images")
# What rows written before a key existed were trained with, or measured on.
OLD_ROW_DEFAULTS = {"blur_max": 3.0, "seed": 0, "lr_schedule": "constant", "images": "unrecorded"}


def images_id() -> str:
    """The md5 DVC recorded for data/generated as the detect stage's input (dvc.lock)."""
    import yaml

    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())
    deps = {d["path"]: d for d in lock["stages"]["detect"]["deps"]}
    return deps["data/generated"]["md5"].removesuffix(".dir")


def probe_sets(params: Any, real: Any, fakes: dict[str, Any], detector: torch.nn.Module
               ) -> list[dict[str, Any]]:
    from pipeline.forensics.crossgen import CrossgenConfig, run_crossgen
    from pipeline.forensics.probe import extractor_features
    from pipeline.metrics.features import domain_extractor

    featurenet = extractor_features(domain_extractor(ROOT / "models" / "featurenet.pt"))
    cg, rows = params.crossgen, []
    for features in FEATURE_SETS:
        start = time.monotonic()
        config = CrossgenConfig(recipe="probe", probe_features=features, probe_c=cg.probe_c,
                                attributor_recipe="probe", attributor_features=features,
                                jpeg_qualities=(100,), blur_sigmas=(), down_up_scales=(),
                                seed=params.seed)
        out = run_crossgen(real, fakes, config, detector=detector, featurenet=featurenet)
        loo = out["leave_one_out"]
        rows.append({"features": list(features), "loo_mean_ap": loo["mean_ap"],
                     "loo_mean_calibrated_accuracy": loo["mean_calibrated_accuracy"],
                     "loo_ap": {f: c["ap"] for f, c in loo["per_family"].items()},
                     "attribution_accuracy": out["attribution"]["accuracy"],
                     "seconds": round(time.monotonic() - start, 1)})
        print(rows[-1], flush=True)
    return rows


def detector_variants(params: Any, real: Any, fakes: dict[str, Any],
                      done: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every row of `done` (earlier rows), then each DETECTOR_VARIANTS row on the current
    images that `done` lacks, trained and scored."""
    from pipeline.detect.run import load_detect_data, train_spec
    from pipeline.detect.train import train_attributor
    from pipeline.forensics.crossgen import CrossgenConfig, robustness_sets, robustness_table

    data = load_detect_data(ROOT / "data" / "prepared", ROOT / "data" / "generated",
                            list(params.zoo), params.seed,
                            params.detect.num_train)
    real_test, fake_test = robustness_sets(real, fakes, params.seed)
    config = CrossgenConfig(jpeg_qualities=(100, 75), blur_sigmas=(1.0,), down_up_scales=())
    images = images_id()
    earlier = {tuple(row[k] for k in VARIANT_KEYS) for row in done}
    rows = list(done)
    for variant in DETECTOR_VARIANTS:
        if (*variant, images) in earlier:
            continue
        aug_prob, epochs, blur_max, seed, schedule = variant
        start = time.monotonic()
        spec = replace(train_spec(params.detect, params.seed), aug_prob=aug_prob, epochs=epochs,
                       blur_max=blur_max, seed=seed, lr_schedule=schedule)
        model = train_attributor([data.real_train, *data.fake_train], spec, "cpu")
        seconds = time.monotonic() - start
        table = robustness_table(model, real_test, fake_test, config)
        ap = {f"{kind}_{r['level']}": r["ap"] for kind, rows_ in table.items() for r in rows_}
        clean = ap["jpeg_100"]
        rows.append({**dict(zip(VARIANT_KEYS, (*variant, images), strict=True)),
                     "ap_clean": clean,
                     "ap_jpeg75": ap["jpeg_75"], "ap_blur1": ap["blur_1.0"],
                     "drop_jpeg75_points": 100 * (clean - ap["jpeg_75"]),
                     "drop_blur1_points": 100 * (clean - ap["blur_1.0"]),
                     "train_seconds": round(seconds, 1),
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-probe", action="store_true")
    parser.add_argument("--skip-detector", action="store_true")
    parser.add_argument("--force", action="store_true",
                        help="retrain every detector variant, ignore the existing JSON")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks" / "results" / "forensics_ablation.json")
    args = parser.parse_args()

    from pipeline.config import load_params
    from pipeline.detect import load_detector
    from pipeline.forensics.data import load_crossgen_sets

    torch.set_num_threads(2)
    params = load_params(ROOT / "params.yaml")
    families = params.family_names()
    real, fakes = load_crossgen_sets(ROOT / "data" / "prepared", ROOT / "data" / "generated",
                                     families, params.crossgen, params.seed)
    earlier = (json.loads(args.out.read_text())
               if args.out.exists() and not args.force else {})
    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    result: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": torch.get_num_threads(), "torch": torch.__version__},
        "date": now, "families": families,
        "crossgen_sizes": {"num_train": params.crossgen.num_train,
                           "num_val": params.crossgen.num_val,
                           "num_test": params.crossgen.num_test},
        "detect_num_train": params.detect.num_train}
    if args.skip_probe:
        result |= {k: earlier[k] for k in ("probe_features", "probe_date") if k in earlier}
    else:
        detector, _ = load_detector(ROOT / "models" / "detector.pt")
        result["probe_features"] = probe_sets(params, real, fakes, detector)
        result["probe_date"] = now
    done = [{**OLD_ROW_DEFAULTS, "date": earlier.get("date"), **row}
            for row in earlier.get("shipped_detector", [])]
    result["shipped_detector"] = (done if args.skip_detector
                                  else detector_variants(params, real, fakes, done))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")

    for row in result.get("probe_features", []):
        print(f"| {' + '.join(row['features'])} | {row['loo_mean_ap']:.3f} | "
              f"{row['loo_mean_calibrated_accuracy']:.3f} | {row['attribution_accuracy']:.3f} |")
    for row in result.get("shipped_detector", []):
        print(f"| {row['aug_prob']} | {row['epochs']} | {row['blur_max']} | {row['seed']} | "
              f"{row['lr_schedule']} | {row['images'][:8]} | {row['ap_clean']:.4f} | "
              f"{row['drop_jpeg75_points']:.1f} | {row['drop_blur1_points']:.1f} | "
              f"{row['train_seconds']:.0f} |")
    print_seed_summary(result.get("shipped_detector", []))


def print_seed_summary(rows: list[dict[str, Any]]) -> None:
    """Per recipe (every variant key but the seed) on more than one seed: the median AP drop
    under blur sigma 1 and JPEG q 75, with min-max, over the seeds."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in VARIANT_KEYS if k != "seed"), []).append(row)
    for recipe, runs in groups.items():
        if len(runs) < 2:
            continue
        cells = []
        for key in ("drop_blur1_points", "drop_jpeg75_points", "ap_clean"):
            values = [r[key] for r in runs]
            cells.append(f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})")
        print(f"| {' | '.join(map(str, recipe[:-1]))} | {recipe[-1][:8]} | {len(runs)} | "
              f"{' | '.join(cells)} |")


if __name__ == "__main__":
    main()
