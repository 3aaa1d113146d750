"""Models load from local directories only; the Hugging Face Hub is never asked.

Deliberately free of torch and transformers, so the driver can call it before starting actors
(which inherit its environment) without loading either.
"""

from __future__ import annotations

import os


def keep_hub_offline() -> None:
    """Set ``HF_HUB_OFFLINE=1`` unless the environment already says otherwise.

    Call it before the first ``import transformers``: huggingface_hub reads the variable once, at
    import. Without it a missing tokenizer file turns into a network request (and, on a machine
    without network, a long retry) instead of an immediate error naming the directory.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
