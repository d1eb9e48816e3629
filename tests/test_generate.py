"""The generate stage: shapes, dtype, labels, disjoint noise per split, determinism, the grid,
MLflow (and the model's run after a crash while logging)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import GenerateConfig, MlflowConfig
from pipeline.errors import UserError
from pipeline.generate import SPLITS, generate_splits, sample_grid, split_seed
from pipeline.models import build_models, make_checkpoint, save_checkpoint

TINY = {"latent_dim": 8, "g_features": 4, "d_features": 4, "conditional": False, "embed_dim": 4}
CFG = GenerateConfig(num_eval=20, num_detector_train=12, num_detector_val=6, num_detector_test=10,
                     batch_size=7)


def write_gan(dest: Path, conditional: bool = False, size: int = 28, channels: int = 1,
              seed: int = 0) -> tuple[Path, Path]:
    """A tiny random DCGAN saved as the train stage does: (generator.pt, discriminator.pt)."""
    torch.manual_seed(seed)
    model_cfg = {**TINY, "conditional": conditional}
    G, D = build_models(model_cfg, (channels, size, size), 10)
    meta = {"model_config": model_cfg, "image_shape": (channels, size, size), "num_classes": 10,
            "class_names": [f"c{i}" for i in range(10)]}
    dest.mkdir(parents=True, exist_ok=True)
    save_checkpoint(dest / "generator.pt", make_checkpoint(**meta, generator=G))
    save_checkpoint(dest / "discriminator.pt", make_checkpoint(**meta, discriminator=D))
    return dest / "generator.pt", dest / "discriminator.pt"


def _read(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def test_splits_layout_and_disjoint_noise(tmp_path: Path) -> None:
    gen, _ = write_gan(tmp_path / "models")
    summary = generate_splits(gen, tmp_path / "generated", CFG, seed=0)
    out = tmp_path / "generated"
    assert sorted(p.name for p in out.iterdir()) == ["detector_test.npz", "detector_train.npz",
                                                     "detector_val.npz", "eval.npz", "grid.png"]
    arrays = {s: _read(out / f"{s}.npz") for s in SPLITS}
    for split, n in (("eval", 20), ("detector_train", 12), ("detector_val", 6),
                     ("detector_test", 10)):
        a = arrays[split]
        assert a["images"].dtype == np.uint8 and a["images"].shape == (n, 28, 28, 1)
        assert a["labels"].dtype == np.int64 and (a["labels"] == -1).all()  # unconditional
        assert list(a["class_names"]) == [f"c{i}" for i in range(10)]
        assert summary[split] == n
    assert len({int(a["noise_seed"]) for a in arrays.values()}) == 4
    # No fake appears in two splits (and none twice within one).
    seen = [img.tobytes() for a in arrays.values() for img in a["images"]]
    assert len(set(seen)) == len(seen)


def test_a_zoo_family_gets_no_eval_set_and_the_same_detector_sets(tmp_path: Path) -> None:
    """Only the default family's fakes are evaluated: the others skip `eval`, and their
    detector sets are the very images a full run draws (each split has its own seed)."""
    gen, _ = write_gan(tmp_path / "models")
    full = generate_splits(gen, tmp_path / "full", CFG, seed=0)
    splits = ("detector_train", "detector_val", "detector_test")
    summary = generate_splits(gen, tmp_path / "zoo", CFG, seed=0, splits=splits)
    assert sorted(p.name for p in (tmp_path / "zoo").iterdir()) == [
        "detector_test.npz", "detector_train.npz", "detector_val.npz", "grid.png"]
    assert {s: summary[s] for s in splits} == {s: full[s] for s in splits}
    for split in splits:
        np.testing.assert_array_equal(_read(tmp_path / "zoo" / f"{split}.npz")["images"],
                                      _read(tmp_path / "full" / f"{split}.npz")["images"])
    with pytest.raises(ValueError, match="splits must be some of"):
        generate_splits(gen, tmp_path / "bad", CFG, seed=0, splits=("train",))


def test_deterministic_and_batch_size_free(tmp_path: Path) -> None:
    gen, _ = write_gan(tmp_path / "models")
    generate_splits(gen, tmp_path / "a", CFG, seed=3)
    generate_splits(gen, tmp_path / "b", CFG.model_copy(update={"batch_size": 500}), seed=3)
    generate_splits(gen, tmp_path / "c", CFG, seed=4)
    a, b, c = (_read(tmp_path / d / "eval.npz")["images"] for d in "abc")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert split_seed(3, "eval") != split_seed(3, "detector_test") != split_seed(4, "eval")


def test_conditional_labels_are_uniform_classes(tmp_path: Path) -> None:
    gen, _ = write_gan(tmp_path / "models", conditional=True, size=32, channels=3)
    cfg = CFG.model_copy(update={"num_eval": 60})
    generate_splits(gen, tmp_path / "g", cfg, seed=0)
    a = _read(tmp_path / "g" / "eval.npz")
    assert a["images"].shape == (60, 32, 32, 3)
    assert a["labels"].min() >= 0 and a["labels"].max() <= 9
    assert len(np.unique(a["labels"])) >= 8  # uniform over 10 classes: nearly all appear


def test_missing_generator_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="generator.pt: checkpoint not found"):
        generate_splits(tmp_path / "generator.pt", tmp_path / "out", CFG, seed=0)
    assert not (tmp_path / "out").exists()


def test_grid_shows_the_first_eval_fakes_exactly(tmp_path: Path) -> None:
    from PIL import Image

    gen, _ = write_gan(tmp_path / "models")
    generate_splits(gen, tmp_path / "g", CFG, seed=0)
    images = _read(tmp_path / "g" / "eval.npz")["images"]  # 20 fakes: a 5 x 4 grid
    grid = np.asarray(Image.open(tmp_path / "g" / "grid.png"))
    assert grid.shape == (4 * 30 + 2, 5 * 30 + 2)
    np.testing.assert_array_equal(grid[2:30, 2:30], images[0, :, :, 0])
    np.testing.assert_array_equal(grid[32:60, 2:30], images[5, :, :, 0])


def test_sample_grid(tmp_path: Path) -> None:
    from PIL import Image

    gen, _ = write_gan(tmp_path / "models")
    out = sample_grid(gen, n=9, seed=1, out=tmp_path / "s.png")
    assert Image.open(out).size == (3 * 30 + 2, 3 * 30 + 2)  # 3x3 tiles of 28 + 2 px padding


def test_stage_writes_outs_and_logs_grid(tmp_path: Path, run_stage, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import Tracker

    write_gan(tmp_path / "models")
    monkeypatch.chdir(tmp_path)  # the sqlite store keeps artifacts in ./mlartifacts
    mlflow_cfg = MlflowConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracker = Tracker.start(mlflow_cfg, "test", {})
    tracker.write_run_file(tmp_path / "models" / "run.json")
    tracker.close()
    params = {"generate": CFG.model_dump(), "mlflow": mlflow_cfg.model_dump()}
    res = run_stage("generate", "--generator", "models/generator.pt", "--run", "models/run.json",
                    "--out", "data/generated", cwd=tmp_path, params=params)
    assert res.returncode == 0, res.stderr
    assert "detector_train" in res.stdout and "12" in res.stdout
    assert (tmp_path / "data" / "generated" / "eval.npz").is_file()
    run_id = json.loads((tmp_path / "models" / "run.json").read_text())["run_id"]
    client = MlflowClient(mlflow_cfg.tracking_uri)
    assert [f.path for f in client.list_artifacts(run_id, "generate")] == ["generate/grid.png"]
    assert client.get_run(run_id).data.tags["generate.n_detector_test"] == "10"


def test_stage_missing_generator(tmp_path: Path, run_stage) -> None:
    res = run_stage("generate", "--generator", "models/generator.pt", "--run", "models/run.json",
                    "--out", "data/generated", cwd=tmp_path, params={})
    assert res.returncode == 1
    assert res.stderr.strip() == ("error: models/generator.pt: checkpoint not found (run the "
                                  "train stage)")


def test_interrupt_while_logging_ends_the_models_run_killed(tmp_path: Path,
                                                             monkeypatch) -> None:
    """Ctrl-C (or SIGTERM) while the stage logs to the model's MLflow run: the run is ended
    KILLED, with an end time, never left RUNNING; the interrupt itself still propagates."""
    import runpy
    import sys

    from mlflow.tracking import MlflowClient

    from pipeline.tracking import Tracker

    write_gan(tmp_path / "models")
    monkeypatch.chdir(tmp_path)
    mlflow_cfg = MlflowConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "params.yaml").write_text(json.dumps(
        {"generate": CFG.model_dump(), "mlflow": mlflow_cfg.model_dump()}))
    tracker = Tracker.start(mlflow_cfg, "test", {})
    tracker.write_run_file(tmp_path / "models" / "run.json")
    client = MlflowClient(mlflow_cfg.tracking_uri)
    client.update_run(tracker.run_id, status="RUNNING")  # the worst case: still marked RUNNING

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Tracker, "set_tags", interrupt)  # the stage logs its counts as tags
    stage = runpy.run_path(str(Path(__file__).parents[1] / "stages" / "generate.py"))
    monkeypatch.setattr(sys, "argv", ["generate.py", "--generator", "models/generator.pt",
                                      "--run", "models/run.json", "--out", "data/generated"])
    with pytest.raises(KeyboardInterrupt):
        stage["main"]()
    info = client.get_run(tracker.run_id).info
    assert info.status == "KILLED" and info.end_time is not None
    assert (tmp_path / "data" / "generated" / "eval.npz").is_file()  # files came first
