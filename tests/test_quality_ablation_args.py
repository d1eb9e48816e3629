"""benchmarks/quality_ablation.py's `--only` entries: a variant, or a variant from another
seed, named as its result rows are (`name@seed<k>`); anything else is refused."""

from __future__ import annotations

import argparse
import importlib.util

import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location(
    "quality_ablation", REPO / "benchmarks" / "quality_ablation.py")
ablation = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ablation)


@pytest.mark.parametrize("seed", [None, 0, 1, 12])
def test_an_entry_reads_back_as_the_row_it_names(seed: int | None) -> None:
    row = ablation.row_name("cond_ms_ema_99", seed)
    assert ablation.parse_row(row) == ("cond_ms_ema_99", seed)


@pytest.mark.parametrize("text", ["nope", "cond_ms@seed", "cond_ms@seedx", "cond_ms@seed-1",
                                  "nope@seed1", "cond_ms@1"])
def test_an_unknown_variant_or_a_bad_seed_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="want a variant"):
        ablation.parse_row(text)
