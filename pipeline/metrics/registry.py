"""Metric registry: names that carry their protocol and sample size, e.g. `fid_domain_10k`.

A name is `<kind>_<space>_<N>`: kind in the registry (`fid`, `kid`, `pr`; `precision` and
`recall` are read as `pr`), space `domain` (FeatureNet) or `inception`, N like `200`, `2k`,
`10k`. Each metric is a function of (real features, fake features, options) returning named
values; `metric_key` builds the flat keys of metrics/quality.json from them. A value may be
None when it does not exist at that N (KID's std when the subset is the whole set): JSON null,
not logged to MLflow.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.errors import UserError
from pipeline.metrics.frechet import fid_from_features
from pipeline.metrics.kid import kid
from pipeline.metrics.precision_recall import precision_recall

SPACES = ("domain", "inception")
ALIASES = {"precision": "pr", "recall": "pr"}


@dataclass(frozen=True)
class MetricOptions:
    kid_subsets: int = 100
    kid_subset_size: int = 1000  # capped at N (as stylegan2-ada does); reported in the results;
    # at the cap every subset is the whole set, so KID's std is None
    pr_k: int = 3
    seed: int = 0
    batch_size: int = 1000  # rows per cdist block


MetricFn = Callable[[np.ndarray, np.ndarray, MetricOptions], dict[str, float | None]]
METRICS: dict[str, MetricFn] = {}


def register_metric(kind: str) -> Callable[[MetricFn], MetricFn]:
    def wrap(fn: MetricFn) -> MetricFn:
        METRICS[kind] = fn
        return fn

    return wrap


@register_metric("fid")
def _fid(real: np.ndarray, fake: np.ndarray, opts: MetricOptions) -> dict[str, float | None]:
    return {"fid": fid_from_features(real, fake)}


@register_metric("kid")
def _kid(real: np.ndarray, fake: np.ndarray, opts: MetricOptions) -> dict[str, float | None]:
    size = min(opts.kid_subset_size, len(real), len(fake))
    mean, std = kid(real, fake, opts.kid_subsets, size, opts.seed)
    return {"kid_mean": mean, "kid_std": std}


@register_metric("pr")
def _pr(real: np.ndarray, fake: np.ndarray, opts: MetricOptions) -> dict[str, float | None]:
    precision, recall = precision_recall(real, fake, opts.pr_k, opts.batch_size)
    return {"precision": precision, "recall": recall}


def format_n(n: int) -> str:
    """10000 -> '10k', 2000 -> '2k', 200 -> '200', 1500 -> '1500'."""
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def parse_n(text: str) -> int:
    return int(text[:-1]) * 1000 if text.endswith("k") else int(text)


def metric_key(value_name: str, space: str, n: int, floor: bool = False) -> str:
    """('kid_mean', 'domain', 10000, floor=True) -> 'kid_domain_floor_10k_mean'."""
    base, _, suffix = value_name.partition("_")
    return f"{base}_{space}{'_floor' if floor else ''}_{format_n(n)}" + (
        f"_{suffix}" if suffix else "")


def valid_names() -> str:
    kinds = "|".join([*METRICS, *ALIASES])
    return f"<{kinds}>_<{'|'.join(SPACES)}>_<N> (e.g. fid_domain_10k, pr_inception_200)"


def parse_metric_name(name: str) -> tuple[str, str, int]:
    """'fid_inception_2k' -> ('fid', 'inception', 2000); UserError listing valid names."""
    m = re.fullmatch(r"([a-z]+)_([a-z]+)_(\d+k?)", name)
    kind = ALIASES.get(m.group(1), m.group(1)) if m else None
    if not m or kind not in METRICS or m.group(2) not in SPACES or parse_n(m.group(3)) < 2:
        raise UserError(f"unknown metric {name!r}; valid: {valid_names()}")
    return kind, m.group(2), parse_n(m.group(3))


def get_metric(kind: str) -> MetricFn:
    if kind not in METRICS:
        raise UserError(f"unknown metric {kind!r}; valid: {', '.join(METRICS)}")
    return METRICS[kind]
