"""pipeline.checkpoints: atomic CPU-only saves, weights-only loads with a format check, and
one-line errors naming the file; the detector and FeatureNet checkpoints go through it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from pipeline.checkpoints import load_state, save_state, to_cpu
from pipeline.detect.model import SourceDetector, save_detector
from pipeline.errors import UserError

FMT = "gan-forensics/test-v1"


def leaves(obj: Any) -> list[torch.Tensor]:
    """Every tensor inside nested dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, list | tuple):
        return [t for v in obj for t in leaves(v)]
    return []


def on_cuda(state: dict[str, Any]) -> dict[str, Any]:
    """`state` with every tensor replaced by a same-shaped tensor on cuda:0. FakeTensorMode
    makes tensors that carry a device and a shape but no data, so this needs no GPU: it is how
    a state_dict looks when the detect stage trains on one."""
    with FakeTensorMode(allow_non_fake_inputs=True):
        return {k: torch.empty_like(v, device="cuda") for k, v in state.items()}


def test_round_trip_keeps_tensors_and_plain_values(tmp_path: Path) -> None:
    state = {"format": FMT, "weights": {"w": torch.arange(4.0)}, "shape": [1, 2, 3],
             "history": [{"epoch": 1, "loss": 0.5}], "rng": torch.ByteTensor([1, 2])}
    save_state(tmp_path / "a.pt", state)
    loaded = load_state(tmp_path / "a.pt", FMT, "test checkpoint")
    assert torch.equal(loaded["weights"]["w"], torch.arange(4.0))
    assert loaded["shape"] == [1, 2, 3] and loaded["history"] == [{"epoch": 1, "loss": 0.5}]
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]  # no temp file left


def test_equal_states_give_equal_bytes_whatever_the_file_name(tmp_path: Path) -> None:
    """DVC hashes the .pt outs: a rerun that computes the same weights must not change them
    (torch.save to a path would embed the random temp file's name in the archive)."""
    state = {"format": FMT, "weights": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3}
    save_state(tmp_path / "generator.pt", state)
    save_state(tmp_path / "other" / "discriminator.pt", state)
    first = (tmp_path / "generator.pt").read_bytes()
    assert first == (tmp_path / "other" / "discriminator.pt").read_bytes()
    save_state(tmp_path / "generator.pt", {**state, "epoch": 4})
    assert (tmp_path / "generator.pt").read_bytes() != first  # and the bytes are the content's


def test_errors_are_one_line_and_name_the_file(tmp_path: Path) -> None:
    def error(path: Path, fmt: str = FMT) -> str:
        with pytest.raises(UserError) as exc:
            load_state(path, fmt, "detector", hint="run the detect stage")
        assert "\n" not in str(exc.value)
        return str(exc.value)

    assert error(tmp_path / "missing.pt") == \
        f"{tmp_path / 'missing.pt'}: detector not found (run the detect stage)"
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert error(tmp_path / "junk.pt").startswith(
        f"{tmp_path / 'junk.pt'}: not a readable checkpoint (")
    save_state(tmp_path / "other.pt", {"format": "something-else"})
    assert error(tmp_path / "other.pt") == (f"{tmp_path / 'other.pt'}: not a {FMT} checkpoint "
                                            "(run the detect stage)")
    torch.save([1, 2], tmp_path / "list.pt")  # not even a dict
    assert "not a gan-forensics/test-v1 checkpoint" in error(tmp_path / "list.pt")


def test_loading_never_unpickles_objects(tmp_path: Path) -> None:
    torch.save({"format": FMT, "obj": Path("x")}, tmp_path / "pickled.pt")  # arbitrary class
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_state(tmp_path / "pickled.pt", FMT, "test checkpoint")


def test_to_cpu_moves_every_nested_tensor_off_the_gpu() -> None:
    state = on_cuda({"a": torch.zeros(2), "b": torch.ones(3)})
    nested = {"model": state, "opt": [state["a"], (state["b"], 7)], "epoch": 3}
    assert {t.device.type for t in leaves(nested)} == {"cuda"}
    moved = to_cpu(nested)
    assert {t.device.type for t in leaves(moved)} == {"cpu"} and len(leaves(moved)) == 4
    assert moved["epoch"] == 3 and isinstance(moved["opt"][1], tuple)


def test_detector_trained_on_a_gpu_is_saved_with_cpu_tensors(tmp_path: Path,
                                                             monkeypatch) -> None:
    """models/detector.pt once held CUDA tensors when detect ran on a GPU (a CPU-only machine
    then needed map_location to read it). Give save_detector a detector whose state_dict is on
    cuda:0 and check what reaches torch.save: every tensor on the CPU, the same keys and
    shapes. (Fake tensors have no data to write, so torch.save is replaced by a recorder.)"""
    model = SourceDetector(1, 3, width=4)
    gpu_state = on_cuda(model.state_dict())
    monkeypatch.setattr(model, "state_dict", lambda: gpu_state)
    saved: list[Any] = []
    monkeypatch.setattr(torch, "save", lambda obj, _path: saved.append(obj))
    save_detector(tmp_path / "detector.pt", model, 4, ["real", "a", "b"], 0.5, (1, 28, 28))
    (ckpt,) = saved
    assert {t.device.type for t in leaves(ckpt)} == {"cpu"}
    assert {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()} == \
        {k: tuple(v.shape) for k, v in gpu_state.items()}
