"""Real image data: our IDX reader/writer, dataset sources (sha256-checked), prepare/split.

Modules (import from them directly; this package imports nothing heavy):
  idx.py      read_idx / read_images / read_labels / write_idx
  sources.py  fetch_dataset: the `fetch` stage (fashion-mnist, mnist, digits, folder)
  prepare.py  prepare_dataset: the `prepare` stage (validate, resize, split, write .npz)
  arrays.py   load_split / load_images / load_images_any / save_split: the .npz contract
  images.py   image folders, PIL resizes, sklearn digits
  split.py    split_indices: seeded hold-out splits
"""
