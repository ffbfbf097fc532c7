"""The model bundle: the one thing that crosses from training to scoring.

A bundle is a directory:
    manifest.json         `lakescore.manifest.Manifest`: format version, model name/version/kind, architecture, feature set
                          (raw inputs with types, ordered features), preprocessing, score
                          definition, threshold (policy, target, value), metrics, lineage, code
                          version, creation time, and the sha256 of every other file;
    weights.safetensors   tensors only;
    reference.json        reference statistics of the training data (feature and score
                          histograms) for drift;
    *.png                 evaluation plots (PR curve, score histogram), for people.

Nothing in a bundle is unpickled or executed on load: JSON and safetensors only. Loading checks
the format version and every sha256 and refuses anything else with a message saying what to do.
The bundle's identity, `Bundle.sha256`, is the sha256 of manifest.json, which itself lists the
hash of every other file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from lakescore.manifest import FORMAT_VERSION, BundleError, Manifest

MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
REFERENCE = "reference.json"

__all__ = ["FORMAT_VERSION", "MANIFEST", "REFERENCE", "WEIGHTS", "Bundle", "BundleError", "Manifest", "load_bundle",
           "read_bundle_files", "sha256_bytes", "verify_files", "write_bundle"]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A verified bundle held in memory (small: a manifest, weights, reference statistics).

    Build it with `verify_files` (or `load_bundle`): `manifest` is the parsed, checked manifest.json.
    """

    files: Mapping[str, bytes]
    manifest: Manifest = field(compare=False)

    @property
    def sha256(self) -> str:
        return sha256_bytes(self.files[MANIFEST])

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def kind(self) -> str:
        return self.manifest.kind

    @property
    def threshold(self) -> float:
        return float(self.manifest.threshold.value)

    @cached_property
    def feature_set(self):
        """The bundle's `lakescore.features.FeatureSet`, built once."""
        return self.manifest.feature_set.build()

    @cached_property
    def reference(self) -> dict[str, Any]:
        return json.loads(self.files[REFERENCE]) if REFERENCE in self.files else {}

    def state_dict(self):
        """The model's tensors (safetensors: no code runs while loading)."""
        from safetensors.torch import load

        return load(self.files[WEIGHTS])

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"


def verify_files(files: Mapping[str, bytes], where: str) -> Bundle:
    """Check the manifest and every file hash; return the Bundle or raise BundleError."""
    if MANIFEST not in files:
        raise BundleError(f"{where} has no {MANIFEST}; it is not a lakescore model bundle")
    try:
        manifest = json.loads(files[MANIFEST])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{where}/{MANIFEST} is not valid JSON ({exc}); re-export the model") from None
    manifest = Manifest.from_json(manifest, f"{where}/{MANIFEST}")
    listed = manifest.files
    if WEIGHTS not in listed:
        raise BundleError(f"{where}/{MANIFEST} lists no {WEIGHTS}; re-export the model")
    for name, expected in listed.items():
        if name not in files:
            raise BundleError(f"{where} lacks {name}, which its manifest lists; copy the whole bundle directory")
        actual = sha256_bytes(files[name])
        if actual != expected:
            raise BundleError(
                f"{where}/{name} has sha256 {actual[:12]}..., but the manifest says {expected[:12]}...: "
                "the file was altered or partly copied; copy the bundle again from the registry"
            )
    unlisted = sorted(set(files) - set(listed) - {MANIFEST})
    if unlisted:
        raise BundleError(f"{where} holds files its manifest does not list ({', '.join(unlisted)}); remove them or re-export")
    return Bundle(files=dict(files), manifest=manifest)


def read_bundle_files(directory: str | os.PathLike) -> dict[str, bytes]:
    """Read every regular file of a bundle directory (not recursive)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BundleError(f"model bundle {str(directory)!r} does not exist; check the path or the registry")
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def load_bundle(directory: str | os.PathLike) -> Bundle:
    """Read and verify a bundle directory."""
    return verify_files(read_bundle_files(directory), str(directory))


def write_bundle(
    directory: str | os.PathLike,
    manifest: Manifest,
    state_dict: Mapping[str, Any],
    reference: Mapping[str, Any],
    extra_files: Mapping[str, bytes] | None = None,
) -> Bundle:
    """Write a bundle atomically: into a temporary sibling directory, then renamed into place.

    Args:
        directory: must not exist yet (bundles are immutable once written).
        manifest: its `format_version` and `files` are filled in here.
        state_dict: torch tensors, written with safetensors.
        reference: JSON-serialisable reference statistics.
        extra_files: more files (plots), hashed like the rest.

    Returns the verified Bundle as loaded back from disk.
    """
    from safetensors.torch import save

    directory = Path(directory)
    if directory.exists():
        raise BundleError(f"{directory} already exists; bundles are immutable, write a new version")
    files: dict[str, bytes] = {
        WEIGHTS: save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}),
        REFERENCE: _json_bytes(reference),
    }
    for name, data in (extra_files or {}).items():
        if name in (MANIFEST, WEIGHTS, REFERENCE) or "/" in name:
            raise BundleError(f"extra bundle file name {name!r} is reserved or not a plain file name")
        files[name] = data
    hashes = {name: sha256_bytes(data) for name, data in sorted(files.items())}
    full = dataclasses.replace(manifest, format_version=FORMAT_VERSION, files=hashes)
    files[MANIFEST] = _json_bytes(full.to_json())
    verify_files(files, str(directory))

    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        for name, data in files.items():
            (staging / name).write_bytes(data)
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load_bundle(directory)


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True, default=_json_default, allow_nan=False).encode()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
