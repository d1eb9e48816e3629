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
        ({"zoo": {"dcgan": {}, "sngan": {"train": {"epochs": -1}}}},
         "zoo.sngan.train.epochs: must be > 0, got -1"),
        ({"zoo": {"dcgan": {}, "sngan": {"model": {"arch": "stylegan"}}}},
         "zoo.sngan.model.arch: must be one of 'dcgan', 'sngan', 'wgan-gp' or 'vae', got "
         "'stylegan'"),
        ({"zoo": {"dcgan": {}, "x": {"model": {"bogus": 1}}}},
         "zoo.x.model.bogus: unknown key (valid: arch,"),
        ({"zoo": {"dcgan": {}, "x": {"lr": 1}}}, "zoo.x.lr: unknown key (valid: seed, model, "
         "train)"),
        ({"zoo": {"dcgan": {}, "x": {"model": {"arch": "sngan", "d_norm": "layer"}}}},
         "zoo.x.model.d_norm: model.arch sngan needs 'spectral'"),
        ({"zoo": {"sngan": {}, "vae": {}}}, "zoo: must have the default model 'dcgan'"),
        ({"zoo": {"dcgan": {"seed": 3}, "vae": {}}}, "zoo.dcgan: must be {}"),
        ({"zoo": {"dcgan": {}, "Bad Name": {}}}, "zoo.Bad Name: a family name is lower-case"),
        ({"zoo": {"dcgan": {}, "vae": {}}, "crossgen": {"families": ["dcgan", "stylegan"]}},
         "crossgen.families: unknown family 'stylegan' (valid: dcgan, vae)"),
        ({"zoo": {"dcgan": {}, "vae": {}}, "crossgen": {"seed_pair": ["dcgan"]}},
         "crossgen.seed_pair: must be two different zoo families or [], got ['dcgan']"),
        ({"zoo": {"dcgan": {}, "a": {"seed": 1}, "b": {"seed": 2, "train": {"epochs": 9}},
                  "c": {}}, "crossgen": {"seed_pair": ["a", "b"]}},
         "crossgen.seed_pair: a and b must differ in their seed and in nothing else"),
        ({"crossgen": {"detector": "svm"}},
         "crossgen.detector: must be one of 'probe' or 'cnn', got 'svm'"),
        ({"crossgen": {"compare": ["probe"]}},
         "crossgen: compare: recipes other than detector ('probe'), each once, got ['probe']"),
        ({"crossgen": {"probe_features": []}},
         "crossgen.probe_features: must name distinct features, at least one, got []"),
        ({"crossgen": {"attributor_features": ["histogram", "colour"]}},
         "crossgen.attributor_features.1: must be one of 'histogram', 'featurenet', "
         "'spectrum' or 'cooccurrence', got 'colour'"),
        ({"crossgen": {"probe_c": 0}}, "crossgen.probe_c: must be > 0.0, got 0"),
        ({"train": {"lr_decay_start": 1.0}}, "train.lr_decay_start: must be < 1.0, got 1.0"),
        ({"train": {"lr_decay_start": -0.5}}, "train.lr_decay_start: must be >= 0.0, got -0.5"),
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


def test_zoo_family_params_merge_over_the_top_level_with_the_arch_preset():
    raw = {"seed": 5, "model": {"g_features": 48}, "train": {"lr_g": 0.003, "n_critic": None},
           "zoo": {"dcgan": {}, "wgan-gp": {"model": {"arch": "wgan-gp", "d_features": 16}},
                   "twin": {"seed": 7, "train": {"epochs": 2}}}}
    base = parse_params(raw)
    assert base.family_names() == ["dcgan", "wgan-gp", "twin"]
    assert parse_params(raw, family="dcgan") == base  # the default model is the top level
    wgan = parse_params(raw, family="wgan-gp")
    # Its own keys win, the top level fills the rest, and the arch's preset applies to what is
    # left at the schema default (n_critic: 5 for wgan-gp, though the dcgan preset gives 1).
    assert (wgan.model.arch, wgan.model.d_features, wgan.model.g_features) == \
        ("wgan-gp", 16, 48)
    assert (wgan.train.loss, wgan.train.n_critic, wgan.model.d_norm) == ("wgan-gp", 5, "layer")
    assert (wgan.train.lr_g, wgan.seed) == (0.003, 5)
    twin = parse_params(raw, family="twin")
    assert (twin.seed, twin.train.epochs, twin.model.arch) == (7, 2, "dcgan")
    with pytest.raises(UserError, match=r"zoo: no family 'bogus' \(valid: dcgan, wgan-gp, "
                                        r"twin\)"):
        parse_params(raw, family="bogus")


def test_repo_zoo_is_what_the_pipeline_trains():
    params = load_params(REPO / "params.yaml")
    assert list(params.zoo)[0] == "dcgan" and {"sngan", "wgan-gp", "vae"} <= set(params.zoo)
    archs = {name: load_params(REPO / "params.yaml", family=name).model.arch
             for name in params.zoo}
    assert {archs[n] for n in params.family_names()} == {"dcgan", "sngan", "wgan-gp", "vae"}
    a, b = params.crossgen.seed_pair
    assert archs[a] == archs[b] == "dcgan"
    gpu = load_params(REPO / "params-gpu.yaml")
    assert list(gpu.zoo) == list(params.zoo) and gpu.crossgen.seed_pair == [a, b]


@pytest.mark.parametrize("section, key, value", [
    ("train", "loss", "hinge"), ("train", "r1_gamma", 1.0), ("train", "diffaugment", ["color"]),
    ("train", "n_critic", 2), ("model", "d_norm", "spectral"), ("model", "conditional", True),
    ("model", "d_conditioning", "projection"), ("model", "g_conditioning", "batchnorm")])
def test_a_default_model_variant_leaves_the_other_archs_of_the_repo_zoo_valid(section, key,
                                                                             value):
    """`dvc exp run -S train.loss=hinge` (a DCGAN variant) must not make the repo's VAE,
    WGAN-GP or SN-GAN invalid: what their arch fixes is theirs, not inherited."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw[section] = {**raw[section], key: value}
    parse_params(raw)  # every family validates
    assert getattr(getattr(parse_params(raw, family="dcgan-seed1"), section), key) == value
    vae, wgan = parse_params(raw, family="vae"), parse_params(raw, family="wgan-gp")
    assert (vae.train.loss, vae.train.r1_gamma, vae.model.conditional,
            vae.model.d_conditioning, vae.model.g_conditioning) == (
                "elbo", 0.0, False, "plane", "input")
    assert (wgan.train.loss, wgan.model.d_norm, wgan.train.n_critic) == ("wgan-gp", "layer", 2)
