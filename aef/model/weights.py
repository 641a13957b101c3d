"""The content hash of a model's weights, stored in its config by ``AEF.save_pretrained`` and
checked by ``AEF.from_pretrained`` (and the pipelines' checkpoint loading, :mod:`aef.pipelines.checkpoint`)."""

from __future__ import annotations

import hashlib

import torch

WEIGHTS_HASH_KEY = "weights_sha256"


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or corrupt, with a message that says which file."""


def weights_digest(state_dict) -> str:
    """sha256 hex digest of a state dict's names, dtypes, shapes and raw bytes, in name order, so it
    depends only on the tensors, not on how a file lays them out."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().to("cpu").contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()
