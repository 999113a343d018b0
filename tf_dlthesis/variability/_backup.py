"""Backups of the Chapter 5 callbacks' state (`SnapshotEnsemble`, `StochasticWeightAveraging`): `backup_dir`.

One `.npz` file per state, written atomically (a temporary name, then `os.replace`) and
checked on reading against the settings and the variables of the run that loads it.
"""

from __future__ import annotations

import glob
import os
import re

import numpy as np


def check_backup_dir(backup_dir):
    """`backup_dir` as a str path (None stays None); the Chapter 5 callbacks' backup directory."""
    if backup_dir is None:
        return None
    path = os.fspath(backup_dir) if isinstance(backup_dir, (str, os.PathLike)) else None
    if not isinstance(path, str):
        raise TypeError(f"`backup_dir` must be a directory path (str or os.PathLike) or None. "
                        f"Received: backup_dir={backup_dir!r}")
    if not path:
        raise ValueError(f"`backup_dir` must be a non-empty directory path or None. Received: backup_dir={path!r}")
    return path


def backup_path(directory, prefix: str, epoch) -> str:
    """The backup file of `epoch` in `directory`: `<prefix><epoch>.npz` (what `remove_backups` matches)."""
    return os.path.join(directory, f"{prefix}{int(epoch)}.npz")


def write_backup(path, arrays, **meta) -> None:
    """Writes `arrays` and `meta` to the .npz file `path` atomically (a temporary name, then `os.replace`)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        np.savez(f, **{f"w{i}": np.asarray(a) for i, a in enumerate(arrays)},
                 **{f"meta_{k}": np.asarray(v) for k, v in meta.items()})
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_backup(path, owner: str, like, **expect) -> tuple[list, dict]:
    """The arrays and metadata of a `write_backup` file, checked against `expect` and the arrays `like`.

    Raises:
        ValueError: a backup written with other settings (`expect`) or for other
            variables (count, shapes or dtypes of `like`).
    """
    with np.load(path, allow_pickle=False) as data:
        meta = {k[len("meta_"):]: data[k].item() for k in data.files if k.startswith("meta_")}
        arrays = [data[f"w{i}"] for i in range(sum(1 for k in data.files if re.fullmatch(r"w\d+", k)))]
    for key, value in expect.items():
        if meta.get(key) != value:
            raise ValueError(f"{owner}: the backup {path} was written with {key}={meta.get(key)!r}, not "
                             f"{key}={value!r}; it belongs to another run. Remove it or pass another `backup_dir`.")
    like = [np.asarray(a) for a in like]
    if len(arrays) != len(like) or any(a.shape != b.shape for a, b in zip(arrays, like)):
        raise ValueError(f"{owner}: the backup {path} holds {len(arrays)} arrays of shapes "
                         f"{[a.shape for a in arrays]}, but this model has {len(like)} of shapes "
                         f"{[b.shape for b in like]}; it was written for another model.")
    out = []
    for a, b in zip(arrays, like):
        if a.dtype != b.dtype and a.dtype.kind == "V" and a.dtype.itemsize == b.dtype.itemsize:
            a = a.view(b.dtype)  # NumPy stores extension dtypes (bfloat16) as raw bytes
        if a.dtype != b.dtype:
            raise ValueError(f"{owner}: the backup {path} holds {a.dtype} arrays where this model has "
                             f"{b.dtype}; it was written for another model.")
        out.append(a)
    return out, meta


def remove_backups(directory, prefix: str) -> None:
    """Removes this callback's `<prefix><epoch>.npz` files (and leftover temporaries) from `directory`."""
    for path in glob.glob(os.path.join(glob.escape(directory), f"{prefix}*")):
        if re.fullmatch(rf"{re.escape(prefix)}\d+\.npz(\.tmp)?", os.path.basename(path)):
            os.remove(path)
