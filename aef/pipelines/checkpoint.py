"""Training checkpoints and model loading for the pipelines.

A checkpoint is a folder ``RUN/checkpoints/step-00001000/`` holding the model as
``AEF.save_pretrained`` writes it (safetensors weights + JSON config) and ``state.pt`` with the
optimizer, scheduler, RNG states and step. ``state.pt`` holds only tensors and plain Python values,
so it loads with ``torch.load(weights_only=True)``: loading a checkpoint never runs stored code.

A checkpoint is written into a temporary folder and renamed into place when complete; renaming is
atomic, so every ``step-*`` folder is complete and a crash leaves at most a ``*.tmp-*`` folder,
which is ignored (and removed by the next save).

``config.json`` also holds ``weights_sha256``, the digest of the saved tensors (:func:`weights_digest`);
loading recomputes it and refuses weights that do not match (bit rot, a partial copy, a file swapped
by hand). ``verify_weights=False`` (``aef embed --no-verify-weights``) skips the check for weights
edited on purpose; a config without the key (written by hand) loads unchecked.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..model.weights import WEIGHTS_HASH_KEY, CheckpointError, weights_digest  # noqa: F401  (this module's API)

STATE_FILE = "state.pt"
CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d{8,})$")
def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step:08d}"


def list_checkpoints(run_dir) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def latest_checkpoint(run_dir) -> Optional[Path]:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def rng_state() -> dict:
    """Every RNG the training loop draws from, as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))


def _fsync_tree(path: Path) -> None:
    for p in [*path.iterdir(), path]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_checkpoint(run_dir, step: int, model, state: dict, keep: Optional[int] = None) -> Path:
    """Write the checkpoint of ``step`` atomically; keep only the newest ``keep`` ones if given."""
    final = step_dir(run_dir, step)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob("*.tmp-*"):
        if stale.is_dir() and not stale.name.endswith(f".tmp-{os.getpid()}"):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model.save_pretrained(tmp)
    torch.save({**state, "step": step}, tmp / STATE_FILE)
    _fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep is not None:
        for _, old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def resolve(path) -> Path:
    """A model folder, a checkpoint folder or a run folder (-> its newest checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    if not path.is_dir():
        raise CheckpointError(f"{path}: expected a checkpoint folder (a run folder, a checkpoints/step-* "
                              "folder or a folder written by save_pretrained), got a file")
    if (path / CHECKPOINTS).is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"{path}: this run has no complete checkpoint yet")
        return latest
    return path


def load_model(path, device="cpu", backend: Optional[str] = "auto", verify_weights: bool = True):
    """Load an :class:`aef.models.AEF` from a checkpoint, with clear errors for missing or corrupt files
    (and for weights that do not match their stored hash, unless ``verify_weights`` is False)."""
    from aef_kernels import dispatch

    from ..model.aef import AEF

    dispatch.requested_backend(backend)  # a bad name is the caller's error, not a damaged checkpoint
    folder = resolve(path)
    try:
        model = AEF.from_pretrained(folder, backend=backend, verify_weights=verify_weights)
    except CheckpointError:
        raise
    except FileNotFoundError as e:
        raise CheckpointError(f"{folder}: incomplete checkpoint, {Path(e.filename or str(e)).name} is missing") from None
    except Exception as e:  # noqa: BLE001 - any failure to parse stored files means a damaged checkpoint
        raise CheckpointError(f"{folder}: cannot load the model, the checkpoint is corrupt or truncated "
                              f"({type(e).__name__}: {e})") from None
    return model.to(device)


def load_state(folder) -> dict:
    """The training state of a checkpoint folder (optimizer, scheduler, RNG, step), code-free."""
    f = Path(folder) / STATE_FILE
    if not f.is_file():
        raise CheckpointError(f"{folder}: incomplete checkpoint, {STATE_FILE} is missing")
    try:
        state = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message advises weights_only=False, i.e. running whatever code the file holds.
        raise CheckpointError(f"{f}: not a training state this version of aef wrote (it holds objects other "
                              "than tensors and plain values, which are never unpickled)") from None
    except Exception as e:  # noqa: BLE001 - unpickling errors come in many types; all mean a damaged file
        raise CheckpointError(f"{f}: corrupt or truncated ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{f}: not a training state (no step)")
    return state
