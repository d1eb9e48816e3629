"""Usefulness of a class-conditional generator: Train on Synthetic, Test on Real (TSTR).

The same classifier (the FeatureNet CNN, `pipeline.metrics.featurenet`, with the same epochs,
batch size and learning rate) is trained twice on as many images: on G's samples with the
classes they were generated for (TSTR), and on real training images (TRTR). Both are scored on
the real test set; TSTR / TRTR is the share of real-data accuracy the samples keep
(Bie et al. 2023 report TSTR 94-95 % at eps = 10 against 97.1 % non-private on MNIST).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pipeline.errors import UserError
from pipeline.generate import sample, split_seed
from pipeline.metrics.featurenet import accuracy, train_featurenet

if TYPE_CHECKING:
    from pipeline.config import Params


@dataclass(frozen=True)
class TstrSpec:
    num_train: int
    epochs: int
    batch_size: int
    lr: float
    width: int
    seed: int

    @classmethod
    def from_params(cls, params: Params, num_real: int) -> TstrSpec:
        """params.yaml's `privacy.tstr_*` recipe, with at most `num_real` training images (the
        real training set's size): TSTR and TRTR train on equal counts."""
        pc = params.privacy
        return cls(min(pc.tstr_num_train, num_real), pc.tstr_epochs, pc.tstr_batch_size,
                   pc.tstr_lr, pc.tstr_width, params.seed)


def classifier_accuracy(train: tuple[np.ndarray, np.ndarray],
                        test: tuple[np.ndarray, np.ndarray], num_classes: int, spec: TstrSpec,
                        device: torch.device, what: str) -> float:
    """Test accuracy of the classifier trained on `train` (uint8 NHWC images, labels)."""
    empty = (train[0][:0], train[1][:0])
    model, _ = train_featurenet(train, empty, num_classes, spec.width, spec.epochs,
                                spec.batch_size, spec.lr, spec.seed, device,
                                log=lambda line: print(f"{what}: {line}", flush=True))
    return accuracy(model, *test, device=device)


def trtr(real_train: tuple[np.ndarray, np.ndarray], real_test: tuple[np.ndarray, np.ndarray],
         num_classes: int, spec: TstrSpec, device: torch.device) -> float:
    """The baseline: the classifier trained on `spec.num_train` real training images."""
    n = min(spec.num_train, len(real_train[0]))
    pick = np.sort(np.random.default_rng(spec.seed).choice(len(real_train[0]), n, replace=False))
    return classifier_accuracy((real_train[0][pick], real_train[1][pick]), real_test,
                               num_classes, spec, device, "trtr")


def tstr(G: torch.nn.Module, meta: dict[str, Any], real_test: tuple[np.ndarray, np.ndarray],
         spec: TstrSpec, device: torch.device, name: str = "G") -> float:
    """The classifier trained on `spec.num_train` samples of conditional G (classes drawn
    uniformly; `meta` as `load_generator` returns it), scored on the real test split."""
    num_classes = int(meta.get("num_classes", 0))
    if not meta["model_config"].get("conditional") or num_classes < 2:
        raise UserError(f"privacy.tstr: {name} is not class-conditional; TSTR needs the class "
                        "of each sample")
    test_classes = int(real_test[1].max()) + 1
    if test_classes > num_classes:
        raise UserError(f"privacy.tstr: {name} knows {num_classes} classes, the real test set "
                        f"has {test_classes}")
    synthetic = sample(G, meta, spec.num_train, split_seed(spec.seed, f"tstr/{name}"),
                       desc=f"sample {name}")
    return classifier_accuracy(synthetic, real_test, num_classes, spec, device, f"tstr {name}")
