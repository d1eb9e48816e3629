"""Pydantic models for `params.yaml`: the ONE place configuration is validated.

Every stage calls `load_params()`; an unknown key, a wrong type or an out-of-range value is a
`UserError` whose one-line message names the key path, e.g.
`params.yaml: train.batch_size: must be > 0, got -3`. `dvc exp run -S` does not validate keys,
so this module is what catches `-S train.epoch=5`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.errors import UserError

PARAMS_FILE = "params.yaml"
# The zoo's default model: exactly the top-level `model` / `train` (evaluate, the generator
# registry and `gan-forensics sample` use it).
DEFAULT_FAMILY = "dcgan"
FAMILY_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")  # a DVC stage suffix and a directory

IMAGE_SIZES = (28, 32, 64)


class Section(BaseModel):
    """Base: unknown keys are errors, values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Section):
    dataset: Literal["fashion-mnist", "mnist", "digits", "folder"] = "fashion-mnist"
    # Local directory: the IDX .gz files (fashion-mnist/mnist) or the images (folder).
    # null = the dataset's default local location (Debian's package for fashion-mnist).
    source: str | None = None
    # When no local copy exists, download from the dataset's canonical URLs (checked by sha256).
    download: bool = True
    # Base URL used instead of the canonical one (http(s):// or file://), e.g. an internal mirror.
    mirror: str | None = None
    image_size: Literal[28, 32, 64] = 28  # square side in pixels; the DCGAN supports 28/32/64
    channels: Literal[1, 3] = 1  # 1 = gray, 3 = RGB (folder datasets; IDX data is gray)
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)  # of the train split, seeded by `seed`
    # Datasets without an official test split (digits, folder) hold out this fraction.
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)


class ModelConfig(Section):
    # The forger family (pipeline/models/zoo.py); see ARCH_PRESETS for what each one fixes.
    arch: Literal["dcgan", "sngan", "wgan-gp", "vae"] = "dcgan"
    latent_dim: int = Field(100, gt=0)  # size of the noise vector z
    g_features: int = Field(64, gt=0)  # generator width (channels of its last hidden layer)
    d_features: int = Field(64, gt=0)  # discriminator width (channels of its first layer)
    conditional: bool = False  # class-conditional G and D (label embedding)
    embed_dim: int = Field(16, gt=0)  # label embedding size when conditional
    # How a conditional D reads the label: plane (a learned per-class image plane beside the
    # input) | projection (a per-class row added to D's linear head: Miyato & Koyama 2018).
    d_conditioning: Literal["plane", "projection"] = "plane"
    # How a conditional G reads it: input (its embedding beside z) | batchnorm (also a per-class
    # gain and bias of every BatchNorm in G: conditional BatchNorm, de Vries et al. 2017).
    g_conditioning: Literal["input", "batchnorm"] = "input"
    g_upsample: Literal["deconv", "resize"] = "deconv"  # G's x2 steps: transposed conv | NN+conv
    # D's normalisation; layer = GroupNorm with one group (per image: a WGAN-GP critic's).
    d_norm: Literal["batch", "spectral", "layer", "none"] = "batch"


class DpConfig(Section):
    """DP-SGD of the discriminator (Opacus, pipeline/privacy/dp.py): Poisson-sampled real
    batches, per-sample gradients clipped to `max_grad_norm`, Gaussian noise calibrated so the
    run's planned epochs end at (`epsilon`, `delta`) under the RDP accountant."""

    enabled: bool = False
    epsilon: float = Field(10.0, gt=0)  # target epsilon at the end of train.epochs
    delta: float = Field(1.0e-5, gt=0, lt=1)  # target delta (well below 1 / training images)
    max_grad_norm: float = Field(1.0, gt=0)  # clipping bound C of each sample's D gradient


class TrainConfig(Section):
    epochs: int = Field(5, gt=0)
    batch_size: int = Field(128, gt=0)  # GLOBAL batch, split evenly across Ray workers
    lr_g: float = Field(2e-4, gt=0)
    lr_d: float = Field(2e-4, gt=0)
    beta1: float = Field(0.5, ge=0, lt=1)  # Adam betas (DCGAN paper: 0.5, 0.999)
    beta2: float = Field(0.999, ge=0, lt=1)
    # Both rates fall linearly to 0 over the run's steps after this fraction of them (of
    # train.epochs x steps per epoch; pipeline/train/schedule.py); null = constant rates.
    # With a decay, train.epochs is part of the run's identity (more epochs: another run).
    lr_decay_start: float | None = Field(None, ge=0, lt=1)
    # Cap on steps per epoch (null = the whole training set); for quick runs and tests.
    max_steps_per_epoch: int | None = Field(None, gt=0)
    grid_size: int = Field(64, gt=0)  # images in the fixed-noise sample grid, per epoch
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 = autocast (GPU profile)
    channels_last: bool = False  # memory format for conv layers
    # ns: non-saturating BCE (Goodfellow 2014) | hinge | wgan-gp: Wasserstein + gradient
    # penalty (model.arch wgan-gp only) | elbo: the VAE's (model.arch vae only).
    loss: Literal["ns", "hinge", "wgan-gp", "elbo"] = "ns"
    # D (critic) steps per G step; null = the arch's: 5 for wgan-gp (Gulrajani 2017), else 1.
    n_critic: int | None = Field(None, gt=0)
    r1_gamma: float = Field(0.0, ge=0)  # R1 penalty weight on real images (0 = off)
    # DiffAugment (Zhao et al. 2020): the same differentiable augmentations of real and fake
    # images before every D forward; any of color, translation, cutout ([] = off).
    diffaugment: list[Literal["color", "translation", "cutout"]] = []
    # Exponential moving average of G's weights (Yazici et al. 2019); 0 = off. When on, the
    # EMA generator (BatchNorm statistics recomputed) is the one exported, sampled, evaluated.
    ema_decay: float = Field(0.0, ge=0, lt=1)
    # Mode seeking (MSGAN, Mao et al. 2019): G also minimises this weight times
    # 1 / (mean |G(z1) - G(z2)| / mean |z1 - z2|) over the two halves of its batch (same
    # classes when conditional), against G mapping distinct z to one image; 0 = off.
    mode_seeking: float = Field(0.0, ge=0)
    # What G learns from: the prepared `train` split, or `val` (disjoint from train and test:
    # the privacy audit's reference model, pipeline/privacy). num_images: the first n of a
    # seeded permutation of it (the audit's size sweep); null = all of it.
    split: Literal["train", "val"] = "train"
    num_images: int | None = Field(None, gt=0)
    # Differentially private D (DpConfig); off = the plain, non-private training above.
    dp: DpConfig = DpConfig()


# What each forger family (`model.arch`) fixes: key -> (the family's value, the values it
# accepts; None = any). A key left at its declared default takes the family's value, so
# `-S model.arch=sngan` alone is a whole SN-GAN; any other value of a fixed key is an error
# naming both. The validated params then say exactly what trains (MLflow, run identity).
ARCH_PRESETS: dict[str, dict[str, tuple[Any, list[Any] | None]]] = {
    # Radford et al. 2015; g_upsample, d_norm and loss are its variants (quality ablation).
    "dcgan": {"train.loss": ("ns", ["ns", "hinge"]), "train.n_critic": (1, None)},
    # Miyato et al. 2018: spectral-norm D, hinge loss; nearest-upsample + conv G (Odena 2016).
    "sngan": {"model.g_upsample": ("resize", ["resize"]),
              "model.d_norm": ("spectral", ["spectral"]),
              "train.loss": ("hinge", ["hinge"]), "train.n_critic": (1, None)},
    # Gulrajani et al. 2017: a critic without BatchNorm (layer norm or none), gradient penalty.
    "wgan-gp": {"model.d_norm": ("layer", ["layer", "none"]),
                "train.loss": ("wgan-gp", ["wgan-gp"]), "train.n_critic": (5, None)},
    # Kingma & Welling 2014: no discriminator, so no D-only techniques; unconditional only.
    "vae": {"train.loss": ("elbo", ["elbo"]), "train.n_critic": (1, [1]),
            "model.conditional": (False, [False]), "model.d_conditioning": ("plane", ["plane"]),
            "model.g_conditioning": ("input", ["input"]),
            "train.r1_gamma": (0.0, [0.0]), "train.mode_seeking": (0.0, [0.0]),
            "train.diffaugment": ([], [[]])},
}


def resolve_arch(model: dict[str, Any], train: dict[str, Any]
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Copies of the raw `model` / `train` sections with `model.arch`'s preset applied
    (ARCH_PRESETS); raises ValueError naming the key that conflicts with the arch."""
    model, train = dict(model), dict(train)
    arch = model.get("arch", "dcgan")
    if arch not in ARCH_PRESETS:
        return model, train  # the Literal check reports it, with the valid names
    sections = {"model": (model, ModelConfig), "train": (train, TrainConfig)}
    for key, (value, allowed) in ARCH_PRESETS[arch].items():
        section, name = key.split(".")
        raw, schema = sections[section]
        current = raw.get(name, schema.model_fields[name].default)
        if current == schema.model_fields[name].default:
            raw[name] = value
        elif allowed is not None and current not in allowed:
            choices = " or ".join(repr(a) for a in allowed)
            raise ValueError(f"{key}: model.arch {arch} needs {choices}, got {current!r}")
    return model, train


class RayConfig(Section):
    # null: $RAY_ADDRESS if set, else an embedded local cluster. "auto" or "host:port" connect.
    address: str | None = None
    # DDP workers (processes). "auto": one per GPU of the cluster with use_gpu (any GPU count),
    # else as many as its CPUs allow at cpus_per_worker each; resolved when Ray is up.
    num_workers: int | Literal["auto"] = 2
    cpus_per_worker: int = Field(1, gt=0)  # also the torch thread count of each worker
    use_gpu: bool = False  # one GPU per worker, NCCL backend
    # Where Ray Train keeps checkpoints (relative = under the repo root). Multi-node clusters
    # need shared storage here: an NFS path or s3://bucket/prefix.
    storage_path: str = "ray_results"
    max_failures: int = Field(2, ge=-1)  # worker-group restarts from the last checkpoint
    keep_checkpoints: int = Field(2, gt=0)

    @field_validator("num_workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> Any:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool)
                               and value > 0):
            return value
        raise ValueError(f"must be a positive integer or 'auto', got {value!r}")


class GenerateConfig(Section):
    num_eval: int = Field(10000, gt=0)  # fakes for FID/KID/PR (the default family's only)
    num_detector_train: int = Field(10000, gt=0)  # fakes the detector learns from
    num_detector_val: int = Field(1000, gt=0)  # fakes its threshold is calibrated on
    num_detector_test: int = Field(5000, gt=0)  # fakes the detector is scored on
    batch_size: int = Field(500, gt=0)


class FeatureNetConfig(Section):
    epochs: int = Field(3, gt=0)
    batch_size: int = Field(128, gt=0)
    lr: float = Field(1e-3, gt=0)
    width: int = Field(32, gt=0)  # channels of the first conv; feature dim = 4 * width


class InceptionConfig(Section):
    # auto: on; N = num_samples on a GPU, cpu_num_samples on a CPU (about 6 images/s on 2 cores).
    enabled: Literal["auto", "on", "off"] = "auto"
    num_samples: int = Field(10000, ge=10)  # k-NN precision/recall needs more than k images
    cpu_num_samples: int = Field(200, ge=10)
    batch_size: int = Field(50, gt=0)

    @field_validator("enabled", mode="before")
    @classmethod
    def _yaml_booleans(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `on`/`off` as true/false; accept what the user meant.
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class EvaluateConfig(Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = cuda when available
    num_samples: int = Field(10000, ge=10)  # N for domain-space FID/KID/PR (and the floor)
    kid_subsets: int = Field(100, gt=0)
    kid_subset_size: int = Field(1000, gt=1)
    pr_k: int = Field(3, gt=0)  # k of the k-NN manifolds (Kynkaanniemi et al. 2019)
    batch_size: int = Field(500, gt=0)
    featurenet: FeatureNetConfig = FeatureNetConfig()
    inception: InceptionConfig = InceptionConfig()


class DetectConfig(Section):
    """The shipped detector: one classifier over {real, each zoo family}; P(fake) = 1 - P(real),
    its threshold calibrated on validation, the most likely family its attribution."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    epochs: int = Field(3, gt=0)
    batch_size: int = Field(128, gt=0)
    lr: float = Field(1e-3, gt=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: per step, lr -> 0
    width: int = Field(32, gt=0)
    # Real training images; as many fakes, an equal share from each family (null = as many as
    # the fakes allow).
    num_train: int | None = Field(None, gt=0)
    # CNNDetection's Blur+JPEG augmentation: per training image, blur (sigma ~ U[0, blur_max])
    # with this probability, then JPEG (quality ~ U{30..100}) with this probability; 0 = off.
    aug_prob: float = Field(0.5, ge=0, le=1)
    blur_max: float = Field(3.0, gt=0)  # CNNDetection's 3 px was for 256 px images
    # Robustness: the real and fake test images alike, JPEG re-encoded / Gaussian-blurred.
    jpeg_quality: int = Field(75, ge=1, le=95)
    blur_sigma: float = Field(1.0, gt=0)  # in pixels


# The frozen features a crossgen probe can read (pipeline/forensics/probe.py computes each).
ProbeFeature = Literal["histogram", "featurenet", "spectrum", "cooccurrence"]


class CrossgenConfig(Section):
    """Cross-generator forensics (the crossgen stage): detectors trained on some families and
    tested on others, attribution, and the shipped detector's robustness."""

    # Families of the matrix, leave-one-out and attribution; null = every zoo family not in
    # seed_pair.
    families: list[str] | None = None
    # Two zoo families that differ only in their seed: the hard attribution case ([] = none).
    seed_pair: list[str] = []
    num_train: int = Field(2000, gt=0)  # real images per detector; as many fakes
    num_val: int = Field(500, gt=0)  # per side, for the calibrated threshold
    num_test: int = Field(1000, gt=0)  # per side, per tested family
    # The matrix / leave-one-out detector: "probe" (frozen features + logistic regression,
    # pipeline/forensics/probe.py) or "cnn" (the shipped detector's CNN, trained end to end);
    # `compare`: other recipes whose leave-one-out is reported beside it.
    detector: Literal["probe", "cnn"] = "probe"
    compare: list[Literal["probe", "cnn"]] = []
    probe_features: list[ProbeFeature] = ["cooccurrence"]
    probe_c: float = Field(0.01, gt=0)  # the probe's inverse L2 strength
    # The attribution classifier over {real, families} (and the seed pair): a probe on these
    # features, or the CNN.
    attributor: Literal["probe", "cnn"] = "probe"
    attributor_features: list[ProbeFeature] = [
        "histogram", "featurenet", "spectrum", "cooccurrence"]
    # The CNNs (the cnn recipe, the cnn attributor, the robustness detector when none is given).
    epochs: int = Field(3, gt=0)
    batch_size: int = Field(64, gt=0)
    lr: float = Field(1e-3, gt=0)
    width: int = Field(32, gt=0)
    # Blur+JPEG augmentation of the cnn recipe's detectors (as the shipped one's; the cnn
    # attributor trains without: it reads the fingerprints augmentation blurs).
    aug_prob: float = Field(0.5, ge=0, le=1)

    @field_validator("seed_pair")
    @classmethod
    def _pair(cls, value: list[str]) -> list[str]:
        if len(value) not in (0, 2) or len(set(value)) != len(value):
            raise ValueError(f"must be two different zoo families or [], got {value!r}")
        return value

    @field_validator("probe_features", "attributor_features")
    @classmethod
    def _features(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError(f"must name distinct features, at least one, got {value!r}")
        return value

    @model_validator(mode="after")
    def _compared(self) -> CrossgenConfig:
        if self.detector in self.compare or len(set(self.compare)) != len(self.compare):
            raise ValueError(f"compare: recipes other than detector ({self.detector!r}), each "
                             f"once, got {self.compare!r}")
        return self


class PrivacyConfig(Section):
    """The audit stage (pipeline/privacy): membership inference against trained zoo families,
    and TSTR usefulness of conditional ones."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Zoo families attacked; each learns from the train split (members = its training images).
    families: list[str] = [DEFAULT_FAMILY]
    # A zoo family trained on disjoint real data (train.split: val) that calibrates each attack
    # (GAN-Leaks): score(target) - score(reference). null = uncalibrated attacks only.
    reference: str | None = None
    num_members: int = Field(1000, ge=2)  # members, and as many non-members (test images)
    num_generated: int = Field(10000, gt=0)  # samples of each G the distance attacks search
    bootstrap: int = Field(1000, ge=10)  # rounds of the AUC's 95 % interval
    # Memorisation view: each generated sample's nearest training vs nearest test image, both
    # pools cut to this many images (equal sizes: a bigger pool is closer by chance alone).
    pool_size: int = Field(10000, gt=0)
    grid_rows: int = Field(8, gt=0)  # generated samples closest to a training image, shown
    # TSTR: conditional zoo families whose samples train a classifier tested on real test
    # images, beside the same classifier trained on as many real images (TRTR).
    tstr: list[str] = []
    tstr_num_train: int = Field(10000, gt=0)
    tstr_epochs: int = Field(3, gt=0)
    tstr_batch_size: int = Field(128, gt=0)
    tstr_lr: float = Field(1e-3, gt=0)
    tstr_width: int = Field(32, gt=0)


class FamilyConfig(Section):
    """One forger family of the zoo: what differs from the top-level seed / model / train.
    The merged sections are validated as the top-level ones are (ARCH_PRESETS included)."""

    seed: int | None = Field(None, ge=0)
    model: dict[str, Any] = {}
    train: dict[str, Any] = {}


class MlflowConfig(Section):
    # null: $MLFLOW_TRACKING_URI if set, else sqlite:///mlflow.db at the repo root.
    tracking_uri: str | None = None
    experiment: str = Field("gan-forensics", min_length=1)
    registered_model: str = Field("gan-forensics-generator", min_length=1)


class Params(Section):
    seed: int = Field(0, ge=0)
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    ray: RayConfig = RayConfig()
    generate: GenerateConfig = GenerateConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    detect: DetectConfig = DetectConfig()
    mlflow: MlflowConfig = MlflowConfig()
    # The forger zoo: family name -> FamilyConfig; `dvc repro train@<name>` trains one.
    zoo: dict[str, FamilyConfig] = {DEFAULT_FAMILY: FamilyConfig()}
    crossgen: CrossgenConfig = CrossgenConfig()
    privacy: PrivacyConfig = PrivacyConfig()

    def family_names(self) -> list[str]:
        """The matrix / leave-one-out / attribution families (crossgen.families resolved)."""
        if self.crossgen.families is not None:
            return list(self.crossgen.families)
        return [name for name in self.zoo if name not in self.crossgen.seed_pair]

    @model_validator(mode="before")
    @classmethod
    def _arch_preset(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        sections = {}
        for name in ("model", "train"):
            value = raw.get(name, {})
            sections[name] = value.model_dump() if isinstance(value, BaseModel) else value
        if not all(isinstance(v, dict) for v in sections.values()):
            return raw  # a section that is not a mapping: field validation names it
        model, train = resolve_arch(sections["model"], sections["train"])
        return {**raw, "model": model, "train": train}

    @model_validator(mode="after")
    def _cross_checks(self) -> Params:
        if self.data.dataset == "folder" and not self.data.source:
            raise ValueError("data.source: required when data.dataset is 'folder' (a directory)")
        if self.data.dataset in ("fashion-mnist", "mnist", "digits") and self.data.channels != 1:
            raise ValueError(f"data.channels: {self.data.dataset} is gray, must be 1")
        workers = self.ray.num_workers
        if isinstance(workers, int) and self.train.batch_size % workers:
            raise ValueError(
                f"train.batch_size: must be divisible by ray.num_workers "
                f"({workers}), got {self.train.batch_size}"
            )
        if self.train.mode_seeking and self.train.loss == "wgan-gp" and self.model.conditional:
            raise ValueError("train.mode_seeking: not with a conditional wgan-gp, whose fakes "
                             "take the real batch's labels (its pairs need one class each)")
        self._check_zoo()
        self._check_dp()
        if self.evaluate.kid_subset_size > self.evaluate.num_samples:
            raise ValueError(
                f"evaluate.kid_subset_size: must be <= evaluate.num_samples "
                f"({self.evaluate.num_samples}), got {self.evaluate.kid_subset_size}"
            )
        return self

    def _check_dp(self) -> None:
        problem = dp_conflict(self.model, self.train, self.ray.num_workers)
        if problem:
            raise ValueError(problem)

    def _check_zoo(self) -> None:
        for name in self.zoo:
            if not FAMILY_NAME.fullmatch(name):
                raise ValueError(f"zoo.{name}: a family name is lower-case letters, digits, "
                                 "'-' and '_' (at most 32), starting with a letter or digit")
        if DEFAULT_FAMILY not in self.zoo:
            raise ValueError(f"zoo: must have the default model {DEFAULT_FAMILY!r} (evaluate "
                             "and the registry use it)")
        if self.zoo[DEFAULT_FAMILY] != FamilyConfig():
            raise ValueError(f"zoo.{DEFAULT_FAMILY}: must be {{}}: it is the default model; "
                             "change the top-level seed/model/train instead")
        valid = ", ".join(self.zoo)
        privacy = self.privacy
        for key, names in (("crossgen.families", self.crossgen.families or []),
                           ("crossgen.seed_pair", self.crossgen.seed_pair),
                           ("privacy.families", privacy.families),
                           ("privacy.reference", [privacy.reference] if privacy.reference
                            else []),
                           ("privacy.tstr", privacy.tstr)):
            for name in names:
                if name not in self.zoo:
                    raise ValueError(f"{key}: unknown family {name!r} (valid: {valid})")


def dp_conflict(model: ModelConfig, train: TrainConfig, num_workers: int | str) -> str | None:
    """Why `train.dp.enabled` cannot train this model, as one `key: problem` line (None: it
    can, or DP is off). The worker loop checks configs built in code with it too."""
    if not train.dp.enabled:
        return None
    if model.arch == "vae":
        return ("model.arch: vae has no discriminator for train.dp to make private; use a GAN "
                "arch (dcgan) or set train.dp.enabled: false")
    if model.d_norm == "batch":
        return ("model.d_norm: batch cannot be trained with train.dp: BatchNorm mixes the "
                "samples of a batch, so per-sample gradients are undefined; use layer or none")
    if model.d_norm == "spectral":
        return ("model.d_norm: spectral cannot be trained with train.dp: Opacus has no "
                "per-sample gradients through spectral norm's power iteration; use layer or none "
                "(model.arch dcgan)")
    if train.loss == "wgan-gp" or train.r1_gamma > 0:
        key, value = ("train.loss", "wgan-gp") if train.loss == "wgan-gp" else (
            "train.r1_gamma", train.r1_gamma)
        return (f"{key}: {value} cannot be trained with train.dp: its gradient penalty needs a "
                "double backward, which Opacus' per-sample gradient hooks do not support")
    if train.channels_last:
        return ("train.channels_last: must be false with train.dp: Opacus' per-sample conv "
                "gradients are wrong on channels_last tensors (measured, opacus 1.6)")
    if num_workers != "auto" and num_workers != 1:
        return (f"ray.num_workers: must be 1 with train.dp, got {num_workers}: Poisson "
                "sampling and the privacy accountant are per process, and DDP across workers "
                "would need one shared sampler and one accountant (not implemented)")
    return None


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`base` with `over` merged in, recursively (mappings merge, other values replace)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = (merge(out[key], value) if isinstance(value, dict)
                    and isinstance(out.get(key), dict) else value)
    return out


def family_raw(raw: dict[str, Any], name: str) -> dict[str, Any]:
    """The raw params of zoo family `name`: its seed / model / train merged over the top-level
    ones (before validation, so ARCH_PRESETS see the family's own values). A family of another
    arch than the top level does not inherit what its arch fixes (`train.loss: hinge` of the
    default DCGAN is no VAE's loss): those keys take its preset unless it sets them itself."""
    zoo = raw.get("zoo") or {DEFAULT_FAMILY: {}}
    if name not in zoo:
        raise UserError(f"zoo: no family {name!r} (valid: {', '.join(zoo)})")
    over = zoo[name] or {}
    out = dict(raw)
    if over.get("seed") is not None:
        out["seed"] = over["seed"]
    for section in ("model", "train"):
        out[section] = merge(raw.get(section) or {}, over.get(section) or {})
    arch = (over.get("model") or {}).get("arch")
    if arch is not None and arch != (raw.get("model") or {}).get("arch", "dcgan"):
        for key in ARCH_PRESETS.get(arch, {}):
            section, field = key.split(".")
            if field not in (over.get(section) or {}):
                out[section].pop(field, None)
    return out


def _describe(err: dict[str, Any]) -> str:
    """One pydantic error as `key.path: problem, got value`."""
    loc = ".".join(str(p) for p in err["loc"])
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<",
              "less_than_equal": "<="}
    if kind in bounds:
        op = bounds[kind]
        limit = next(iter(ctx.values()))
        return f"{loc}: must be {op} {limit}, got {value!r}"
    if kind == "extra_forbidden":
        return f"{loc}: unknown key"
    if kind == "literal_error":
        return f"{loc}: must be one of {ctx.get('expected')}, got {value!r}"
    if kind == "value_error":
        msg = str(ctx.get("error", err["msg"]))
        return msg if loc == "" else f"{loc}: {msg}"
    return f"{loc}: {err['msg'][0].lower()}{err['msg'][1:]}, got {value!r}"


def _valid_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed in the section that contains `loc` (for 'unknown key' hints); a
    mapping of sections (`zoo.<name>`) is walked through its value type."""
    parts = list(loc[:-1])
    while parts:
        field = model.model_fields.get(str(parts.pop(0)))
        ann = getattr(field, "annotation", None)
        args = typing.get_args(ann)
        if typing.get_origin(ann) is dict and args and isinstance(args[1], type) \
                and issubclass(args[1], BaseModel) and parts:
            parts.pop(0)  # the mapping's key (a family name)
            ann = args[1]
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def _validate(raw: dict[str, Any], source: str, prefix: str = "") -> Params:
    """Params.model_validate with every error as one `key.path: problem` line."""
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        parts = []
        for err in exc.errors():
            text = _describe(err)
            if err["type"] == "extra_forbidden":
                keys = _valid_keys(Params, tuple(err["loc"]))
                text += f" (valid: {', '.join(keys)})" if keys else ""
            parts.append(prefix + text)
        raise UserError(f"{source}: " + "; ".join(parts)) from None


def parse_params(raw: Any, source: str = PARAMS_FILE, family: str | None = None) -> Params:
    """Validate a params mapping and every zoo family's merged params; raise `UserError` with
    one line naming every bad key. `family`: return that zoo family's params (its seed, model
    and train merged over the top-level ones) instead of the top-level ones."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{source}: must be a mapping of sections, got {type(raw).__name__}")
    params = _validate(raw, source)
    families = {name: params if name == DEFAULT_FAMILY else
                _validate(family_raw(raw, name), source, f"zoo.{name}.")
                for name in params.zoo}
    pair = params.crossgen.seed_pair
    if pair:
        a, b = (families[n].model_dump(include={"model", "train"}) for n in pair)
        if a != b or families[pair[0]].seed == families[pair[1]].seed:
            raise UserError(f"{source}: crossgen.seed_pair: {pair[0]} and {pair[1]} must "
                            "differ in their seed and in nothing else (model, train)")
    _check_privacy(params.privacy, families, source)
    if family is None:
        return params
    if family not in families:
        raise UserError(f"{source}: zoo: no family {family!r} (valid: {', '.join(families)})")
    return families[family]


def _check_privacy(cfg: PrivacyConfig, families: dict[str, Params], source: str) -> None:
    """What the audit needs of the zoo families it names (their merged params)."""
    for name in cfg.families:
        if families[name].train.split != "train":
            raise UserError(f"{source}: privacy.families: {name} learns from the "
                            f"{families[name].train.split} split; its members must be training "
                            "images (train.split: train)")
    ref = cfg.reference
    if ref is not None:
        if families[ref].train.split != "val":
            raise UserError(f"{source}: privacy.reference: {ref} must learn from data disjoint "
                            "from the members and non-members: set its train.split to val")
        if ref in cfg.families:
            raise UserError(f"{source}: privacy.reference: {ref} is also in privacy.families")
    for name in cfg.tstr:
        if not families[name].model.conditional:
            raise UserError(f"{source}: privacy.tstr: {name} is not class-conditional (TSTR "
                            "trains a classifier on its samples' classes): set its "
                            "model.conditional: true")


def load_params(path: str | os.PathLike[str] = PARAMS_FILE, family: str | None = None
                ) -> Params:
    """Read and validate `params.yaml` (the only entry point stages use); `family`: that zoo
    family's params (see `parse_params`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: not found (run from the repository root)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}: invalid YAML{where}") from None
    return parse_params(raw, str(path), family)


def params_hash(*sections: BaseModel, extra: Any = None) -> str:
    """A short stable hash of config sections (and extra JSON-able data), for names and caches."""
    blob = json.dumps([s.model_dump(mode="json") for s in sections] + [extra], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def flatten(params: Params) -> dict[str, Any]:
    """Params as `{"train.batch_size": 128, ...}` (dotted keys, for MLflow)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else key, sub)
        else:
            out[prefix] = value

    walk("", params.model_dump(mode="json"))
    return out
