"""DVC stage `fetch`: put the dataset's four IDX .gz files and manifest.json in `data/raw/`.

    python stages/fetch.py --out data/raw

params.yaml `data.dataset` picks fashion-mnist (Debian's copy at /usr/share/datasets/, or a
download checked by sha256), mnist, digits (sklearn, offline) or folder (your images).
The directory is replaced atomically: when this fails, the previous data/raw/ is untouched.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import load_params
from pipeline.errors import run_cli


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="raw data directory to write")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()

    from pipeline.data.sources import fetch_dataset  # after argument errors: imports PIL, tqdm

    params = load_params(args.params)
    manifest = fetch_dataset(params.data, params.seed, args.out)
    shape = "x".join(str(d) for d in manifest["image_shape"])
    print(f"fetched {manifest['dataset']} ({len(manifest['class_names'])} classes, {shape}) "
          f"from {manifest['source']} into {args.out}")


if __name__ == "__main__":
    run_cli(main)
