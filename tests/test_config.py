"""params.yaml validation: every bad key or value is one line naming the key path."""

from pathlib import Path

import pytest
import yaml

from pipeline.config import flatten, load_params, params_hash, parse_params
from pipeline.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_yaml_is_valid_and_complete():
    params = load_params(REPO / "params.yaml")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    # Every key the repo's params.yaml sets is a declared one, and it declares every section.
    assert set(raw) == set(params.model_dump())
    assert flatten(params)["train.batch_size"] == raw["train"]["batch_size"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"train": {"epoch": 5}}, "train.epoch: unknown key (valid: epochs,"),
        ({"bogus": 1}, "bogus: unknown key (valid: seed, data,"),
        ({"train": {"batch_size": -3}}, "train.batch_size: must be > 0, got -3"),
        ({"train": {"epochs": 0}}, "train.epochs: must be > 0, got 0"),
        ({"model": {"g_features": 0}}, "model.g_features: must be > 0, got 0"),
        ({"data": {"image_size": 0}}, "data.image_size: must be one of 28, 32 or 64, got 0"),
        ({"data": {"image_size": -28}}, "data.image_size: must be one of 28, 32 or 64, got -28"),
        ({"data": {"val_fraction": 1.0}}, "data.val_fraction: must be < 1.0, got 1.0"),
        ({"data": {"val_fraction": -0.1}}, "data.val_fraction: must be >= 0.0, got -0.1"),
        ({"data": {"dataset": "cifar"}}, "data.dataset: must be one of 'fashion-mnist'"),
        ({"data": {"dataset": "folder"}}, "data.source: required when data.dataset is 'folder'"),
        ({"data": {"channels": 3}}, "data.channels: fashion-mnist is gray, must be 1"),
        ({"train": {"epochs": "five"}}, "train.epochs: input should be a valid integer"),
        ({"train": {"batch_size": 127}}, "train.batch_size: must be divisible by ray.num_workers"),
        ({"evaluate": {"inception": {"enabled": "maybe"}}},
         "evaluate.inception.enabled: must be one of 'auto', 'on' or 'off', got 'maybe'"),
        ({"evaluate": {"num_samples": 100}}, "evaluate.kid_subset_size: must be <= evaluate"),
        ([1, 2], "must be a mapping of sections, got list"),
    ],
)
def test_bad_params_name_the_key(raw, expected):
    with pytest.raises(UserError) as err:
        parse_params(raw)
    message = str(err.value)
    assert expected in message
    assert "\n" not in message


def test_load_params_reports_file_problems(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_params(tmp_path / "params.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("train: {epochs: 3\n")
    with pytest.raises(UserError, match=r"invalid YAML at line \d+"):
        load_params(bad)


def test_params_are_frozen_and_hash_is_stable():
    a = parse_params({})
    with pytest.raises(ValueError):
        a.train.epochs = 7  # type: ignore[misc]
    assert params_hash(a.train) == params_hash(parse_params({}).train)
    assert params_hash(a.train) != params_hash(parse_params({"train": {"epochs": 9}}).train)


def test_gpu_profile_is_valid_and_yaml_on_means_on():
    params = load_params(REPO / "params-gpu.yaml")
    assert params.ray.use_gpu and params.train.precision == "bf16"
    assert params.evaluate.inception.enabled == "on"  # written as a bare YAML `on`
    assert parse_params({"evaluate": {"inception": {"enabled": False}}}).evaluate.inception \
        .enabled == "off"
