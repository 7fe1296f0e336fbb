"""Atomic, idempotent materialisation of a smoke data set directory (``seg-data``, ``det-data``).

The set is written into a temporary sibling of ``out`` and renamed into place, so a reader never sees
half a set. ``out/manifest.json`` records the build parameters: the same parameters again is a no-op,
other parameters are an error unless ``force`` (then the old tree is swapped out and removed).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def materialise(out: str | os.PathLike, params: dict, write: Callable[[Path], dict], *, what: str,
                force: bool = False) -> dict:
    """Run ``write(tmp_dir) -> manifest`` (``params`` is added) unless ``out`` already holds this set."""
    out = Path(out)
    manifest_path = out / "manifest.json"
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        if old.get("params") == params:
            return old
        if not force:
            raise FileExistsError(f"{out} holds a {what} built with other parameters "
                                  f"({old.get('params')}); pass --force to rebuild")
    elif out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} exists, is not empty and has no manifest.json; pass --force")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        manifest = {"params": params, **write(tmp)}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if out.exists():  # force: move the old tree aside, then swap
            old_tree = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old_tree / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old_tree, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


__all__ = ["materialise", "sha256"]
