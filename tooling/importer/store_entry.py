"""Writing a model-store entry atomically: staged in a hidden folder, renamed into place.

The staging folder sits in the store root (same filesystem, so the rename is atomic) one level
too shallow for the store's ``<name>/<version>/manifest.json`` pattern: a reader never sees a
half-written entry, and a failed import leaves nothing behind.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tooling.importer.errors import ImportRefused

NAME = r"^[a-z0-9][a-z0-9._-]{0,63}$"  # as model_store.manifest.Manifest.name
VERSION = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$"


def check_ref(name: str, version: str) -> None:
    """Refuse a name or version the manifest would reject, before any work is done."""
    if not re.fullmatch(NAME, name):
        raise ImportRefused("name", f"{name!r}: lowercase letters, digits, '.', '_' and '-' (64 at most)")
    if not re.fullmatch(VERSION, version):
        raise ImportRefused("version", f"{version!r}: letters, digits, '.', '_' and '-' (32 at most)")


@contextmanager
def staged_entry(store: Path, name: str, version: str, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder; on a clean exit it becomes ``store/name/version``.

    On any exception the staging folder is deleted and the store is as it was.
    """
    check_ref(name, version)
    dest = store / name / version
    if dest.exists() and not overwrite:
        raise ImportRefused("version", f"{dest} already exists (pass --overwrite to replace it)")
    store.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".import-{name}-{version}-", dir=store))
    try:
        yield staging
        dest.parent.mkdir(exist_ok=True)
        if dest.exists():  # --overwrite: move the old entry aside first, drop it after
            # Two levels down, where the store's <name>/<version>/manifest.json never looks:
            # a kill before the delete leaves a folder no reader mistakes for a model.
            old = Path(tempfile.mkdtemp(prefix=f".replaced-{name}-{version}-", dir=store))
            (old / "old").mkdir()
            dest.rename(old / "old" / version)
            staging.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
