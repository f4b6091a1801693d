"""The model store: finds manifests on disk and hands out verified model files.

Layout: ``<root>/<name>/<version>/manifest.json`` beside the file the manifest names. Loading
checks the file's sha256 against the manifest and refuses paths that leave the version dir.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from model_store.manifest import BASE_VARIANT, MANIFEST_NAME, Manifest, sha256_file

DEFAULT_ROOT = Path(__file__).resolve().parent


class ModelStoreError(Exception):
    """A model is missing, malformed or fails verification."""


class ChecksumMismatch(ModelStoreError):
    pass


@dataclass(frozen=True)
class StoredModel:
    manifest: Manifest
    directory: Path

    @property
    def path(self) -> Path:
        """The (fp32) model file, guaranteed to sit inside the version directory."""
        return self.variant_path(BASE_VARIANT)

    def variant_path(self, variant: str) -> Path:
        """A variant's file (``fp32``: the manifest's own), inside the version directory."""
        try:
            name, _ = self.manifest.variant_file(variant)
        except ValueError as e:
            raise ModelStoreError(str(e)) from e
        return self.file_path(name)

    def verify(self, variant: str = BASE_VARIANT) -> Path:
        """A variant's file path after checking it exists and matches the manifest's sha256."""
        try:
            name, expected = self.manifest.variant_file(variant)
        except ValueError as e:
            raise ModelStoreError(str(e)) from e
        return self.verify_file(name, expected)

    def verify_all(self, variant: str = BASE_VARIANT) -> Path:
        """The denoiser variant's path after checking every file the model runs from: the
        denoiser, the other components, the tokenizer and any external weights."""
        m = self.manifest
        for spec in (m.text_encoder, m.vae_decoder, m.tokenizer):
            if spec is not None:
                self.verify_file(spec.file, spec.sha256)
        for name, digest in m.external_data.items():
            self.verify_file(name, digest)
        return self.verify(variant)

    def verify_file(self, name: str, expected: str) -> Path:
        """Any file of this version (a denoiser variant, a pipeline component, a tokenizer),
        checked against its sha256 from the manifest."""
        path = self.file_path(name)
        if not path.is_file():
            raise ModelStoreError(f"{self.manifest.ref}: model file {path} is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ChecksumMismatch(
                f"{self.manifest.ref}: checksum mismatch for {path.name}: manifest says "
                f"{expected}, file has {actual}; the file is corrupt or was replaced"
            )
        return path

    def file_path(self, name: str) -> Path:
        """A file of this version by name, refused if the name leads out of its directory."""
        path = (self.directory / name).resolve()
        if not path.is_relative_to(self.directory.resolve()) or path.parent != self.directory.resolve():
            raise ModelStoreError(f"{self.manifest.ref}: model file {name!r} escapes its directory")
        return path


def read_manifest(directory: Path) -> StoredModel:
    """Parse and validate ``directory/manifest.json``."""
    file = directory / MANIFEST_NAME
    try:
        manifest = Manifest.model_validate(json.loads(file.read_text()))
    except FileNotFoundError as e:
        raise ModelStoreError(f"no manifest at {file}") from e
    except (json.JSONDecodeError, ValidationError) as e:
        raise ModelStoreError(f"invalid manifest {file}: {e}") from e
    if (directory.parent.name, directory.name) != (manifest.name, manifest.version):
        raise ModelStoreError(
            f"{file}: manifest names {manifest.ref} but lives in {directory.parent.name}/{directory.name}"
        )
    return StoredModel(manifest, directory)


class ModelStore:
    """Read-only view of the models under ``root``."""

    def __init__(self, root: Path = DEFAULT_ROOT) -> None:
        self.root = root

    def models(self) -> list[StoredModel]:
        """Every model version with a manifest, sorted by name then version."""
        found = sorted(self.root.glob(f"*/*/{MANIFEST_NAME}"))
        # Hidden folders are the importer's staging and leftovers, never entries.
        return [read_manifest(m.parent) for m in found if not m.parent.parent.name.startswith(".")]

    def get(self, name: str, version: str | None = None) -> StoredModel:
        """A model by name, at ``version`` or its newest version."""
        candidates = [m for m in self.models() if m.manifest.name == name]
        if version is not None:
            candidates = [m for m in candidates if m.manifest.version == version]
        if not candidates:
            wanted = f"{name}:{version}" if version else name
            raise ModelStoreError(f"model {wanted} not found in {self.root}")
        return max(candidates, key=lambda m: _version_key(m.manifest.version))


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)
