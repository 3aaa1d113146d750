"""A model directory carried from the driver's disk to the node an actor runs on.

On a Ray cluster the ``--encoder`` and ``--head`` directories exist only where the driver runs.
The driver reads each once (``read_model_dir``) and puts it in Ray's object store; each actor
writes it back under its node's temporary directory (``write_model_dir``), once per node and
content, and loads it from there. The embedded default model needs none of this: every node has
it installed with clstream.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import ModelLoadError

#: Where actors write the directories they are sent, under the node's temporary directory.
CACHE_DIR_NAME = "clstream-models"


@dataclass(frozen=True)
class ModelFiles:
    """Every regular file of one model directory, by path relative to it."""

    #: Where the driver read it (for messages); never opened on the actor's node.
    source: str
    #: SHA-256 over the names and contents: the directory's name on the actor's node.
    digest: str
    files: tuple[tuple[str, bytes], ...]

    @property
    def size(self) -> int:
        return sum(len(data) for _, data in self.files)


def read_model_dir(path: Path) -> ModelFiles:
    """Read ``path`` (its regular files, subdirectories included; hidden ones skipped)."""
    if not path.is_dir():
        raise ModelLoadError(f"{path} is not a directory on the driver's machine")
    digest = hashlib.sha256()
    files = []
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        name = file.relative_to(path).as_posix()
        if any(part.startswith(".") for part in Path(name).parts):
            continue
        data = file.read_bytes()
        digest.update(name.encode() + b"\0" + len(data).to_bytes(8, "big") + data)
        files.append((name, data))
    if not files:
        raise ModelLoadError(f"{path} holds no files")
    return ModelFiles(source=str(path), digest=digest.hexdigest(), files=tuple(files))


def write_model_dir(model: ModelFiles, root: Path | None = None) -> Path:
    """The directory holding ``model`` on this node: written on first use (atomically, so two
    actors on one node never see half of it), reused after."""
    root = root if root is not None else Path(tempfile.gettempdir()) / CACHE_DIR_NAME
    target = root / model.digest[:32]
    if target.is_dir():
        return target
    root.mkdir(mode=0o700, parents=True, exist_ok=True)  # this node's user's, as the temp dir
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    try:
        for name, data in model.files:
            destination = staging / name
            if not destination.resolve().is_relative_to(staging.resolve()):
                raise ModelLoadError(f"{model.source}: file name {name!r} leaves the model directory")
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(data)
        os.replace(staging, target)
    except OSError:
        if not target.is_dir():  # another actor on this node got there first otherwise
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
