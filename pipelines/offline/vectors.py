"""Pooled vectors of many texts, embedded once and cached on disk.

``train-head``, ``eval`` and ``finetune --lora``'s final scoring embed the same texts with the same
encoder again and again; the cache turns a second run into seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from workers.model import BertEncoder

VECTOR_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clstream" / "vectors"

#: The shipped head and ``train-head`` use 128 tokens; ``eval`` and the LoRA run's final scoring
#: use the same value so they hit the vectors ``train-head`` cached.
DEFAULT_MAX_LENGTH = 128

# Texts handed to the encoder per progress-bar step: large enough that the encoder's own
# length-sorting still packs batches tightly, small enough that the bar moves every few seconds.
_EMBED_CHUNK = 1024


def embed_texts(
    encoder: BertEncoder,
    texts: Sequence[str],
    batch_size: int = 64,
    progress: bool = True,
    cache_dir: Path | None = VECTOR_CACHE_DIR,
) -> torch.Tensor:
    """``[len(texts), hidden]`` float32 pooled vectors, in input order.

    Cached under ``cache_dir`` (None: no cache) as safetensors, keyed by the encoder's weights
    sha256, pooling, max_length and the exact texts in order; a changed key simply misses.
    """
    cache_file = None
    if cache_dir is not None:
        cache_file = cache_dir / f"{_vector_cache_key(encoder, texts)}.safetensors"
        if cache_file.is_file():
            return load_file(str(cache_file))["vectors"]
    # Sorting all texts by length before chunking keeps padding as small as one big encode() would.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    vectors = torch.empty((len(texts), encoder.hidden_size), dtype=torch.float32)
    with tqdm(total=len(texts), desc="embedding", unit="text", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(order), _EMBED_CHUNK):
            chunk = order[start : start + _EMBED_CHUNK]
            vectors[torch.tensor(chunk)] = encoder.encode(
                [texts[i] for i in chunk], batch_size=batch_size
            ).vectors
            bar.update(len(chunk))
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        partial = cache_file.with_suffix(f".{os.getpid()}.tmp")
        save_file({"vectors": vectors}, str(partial))
        os.replace(partial, cache_file)  # atomic: a concurrent or killed run never leaves half a file
    return vectors


def _vector_cache_key(encoder: BertEncoder, texts: Sequence[str]) -> str:
    texts_digest = hashlib.sha256()
    for text in texts:
        texts_digest.update(text.encode("utf-8", errors="surrogatepass"))
        texts_digest.update(b"\0")
    key = {
        "encoder_sha256": encoder.weights_id(),
        "pooling": encoder.pooling,
        "max_length": encoder.max_length,
        "texts_sha256": texts_digest.hexdigest(),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
