"""DVC stage `crossgen`: does a detector catch forgers it never saw, can it name the forger, and
how does processing hurt the shipped detector?

    python stages/crossgen.py --real data/prepared --fake data/generated \
        --detector models/detector.pt --featurenet models/featurenet.pt --models models \
        --metrics metrics/crossgen.json --plots metrics/crossgen

Writes metrics/crossgen.json (matrix, leave_one_out, attribution with its seed-level case,
robustness; the protocol is pipeline/forensics/crossgen.py's docstring) and its heat maps and
curves, then logs them to an MLflow run of its own, tagged with each family's model run
(models/<family>/run.json). Files first: a tracking failure loses nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.config import load_params
from pipeline.errors import UserError, run_cli


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, what in (("--real", "prepared dir"), ("--fake", "generated dir, one per family"),
                       ("--detector", "the shipped detector (robustness sweep)"),
                       ("--featurenet", "the domain FeatureNet (the probe's features)"),
                       ("--models", "models dir: <family>/run.json link the model runs"),
                       ("--metrics", "crossgen JSON to write"),
                       ("--plots", "plots directory to write")):
        parser.add_argument(flag, type=Path, required=True, help=what)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()

    import time
    from dataclasses import replace

    from pipeline.detect import load_detector  # torch: after argument errors
    from pipeline.detect.train import TrainSpec
    from pipeline.device import resolve_device
    from pipeline.forensics.crossgen import CrossgenConfig, run_crossgen
    from pipeline.forensics.data import load_crossgen_sets
    from pipeline.forensics.plots import write_plots
    from pipeline.forensics.probe import extractor_features
    from pipeline.forensics.summary import crossgen_summary
    from pipeline.io import atomic_dir, write_json
    from pipeline.metrics.features import domain_extractor

    params = load_params(args.params)
    cg = params.crossgen
    device = resolve_device(params.detect.device, "detect.device")
    families = params.family_names()
    if len(families) < 2:
        raise UserError(f"crossgen.families: needs at least two families to leave one out, got "
                        f"{families} (add families to params.yaml zoo)")
    start = time.monotonic()
    real, fakes = load_crossgen_sets(args.real, args.fake, families + list(cg.seed_pair), cg,
                                     params.seed)
    detector, _ = load_detector(args.detector, device)
    spec = TrainSpec(epochs=cg.epochs, batch_size=cg.batch_size, lr=cg.lr, width=cg.width,
                     seed=params.seed)
    config = CrossgenConfig(recipe=cg.detector, compare=tuple(cg.compare),
                            probe_features=tuple(cg.probe_features), probe_c=cg.probe_c,
                            attributor_recipe=cg.attributor,
                            attributor_features=tuple(cg.attributor_features),
                            detector=replace(spec, aug_prob=cg.aug_prob), attributor=spec,
                            robustness_aug_prob=cg.aug_prob, seed=params.seed)
    featurenet = None
    probes = (cg.probe_features if "probe" in (cg.detector, *cg.compare) else []) + (
        cg.attributor_features if cg.attributor == "probe" else [])
    if "featurenet" in probes:
        featurenet = extractor_features(domain_extractor(args.featurenet, device))
    result = run_crossgen(real, {f: fakes[f] for f in families}, config,
                          detector=detector, device=device,
                          seed_pair={f: fakes[f] for f in cg.seed_pair} or None,
                          featurenet=featurenet)
    runs = {}
    for name in params.zoo:
        run_file = args.models / name / "run.json"
        if run_file.is_file():
            runs[name] = json.loads(run_file.read_text())["run_id"]
    result["model_runs"] = runs
    result["seconds"] = round(time.monotonic() - start, 1)
    write_json(args.metrics, result)
    with atomic_dir(args.plots) as tmp:
        write_plots(result, tmp)
    summary = crossgen_summary(result)
    print(summary.markdown, flush=True)

    from pipeline.config import flatten
    from pipeline.provenance import run_tags
    from pipeline.tracking import Tracker

    flat = {k: v for k, v in flatten(params).items()
            if k.split(".")[0] in ("seed", "crossgen", "zoo")}
    tags = run_tags(**{f"zoo.{name}.run_id": run_id for name, run_id in runs.items()},
                    **{"gan-forensics.stage": "crossgen", "device": device.type})
    # Closed FINISHED, or FAILED/KILLED on an error: the run is never left RUNNING.
    with Tracker.start(params.mlflow, "zoo", flat, tags, suffix="@crossgen").closing() as tracker:
        tracker.log_metrics(summary.metrics)
        tracker.set_tags({**summary.tags, "mlflow.note.content": summary.markdown})
        tracker.log_artifact(args.metrics, "crossgen")
        for png in sorted(args.plots.glob("*.png")):
            tracker.log_artifact(png, "crossgen")


if __name__ == "__main__":
    run_cli(main)
