"""Checkpoints that were damaged or were never ours are refused with the project's own message:
the weights' content hash stored at save and verified at load, and a state file the safe
unpickler refuses."""

import datetime
import json

import pytest
import torch

from aef.pipelines.checkpoint import CheckpointError, load_model, load_state, weights_digest
from aef.models import AEF


@pytest.fixture
def saved(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def _flip(path, count=50):
    """XOR ``count`` bytes in the middle of the tensor data (after the safetensors header)."""
    raw = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(raw[:8], "little")
    mid = start + (len(raw) - start) // 2
    for i in range(mid, mid + count):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_save_stores_the_hash_of_the_weights(saved, tiny_model):
    """config.json holds the sha256 digest of the saved tensors, and it is the digest of the model's state."""
    stored = json.loads((saved / "config.json").read_text())["weights_sha256"]
    assert stored == weights_digest(tiny_model.state_dict())
    assert len(stored) == 64 and int(stored, 16) >= 0


@pytest.mark.parametrize("count", [1, 50])
def test_flipped_bytes_in_the_weights_are_refused_naming_the_file(saved, count):
    """A model.safetensors with bytes flipped inside its tensors is refused by from_pretrained and
    load_model with an error naming the file, where before it loaded silently."""
    _flip(saved / "model.safetensors", count)
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*sha256"):
        AEF.from_pretrained(saved)
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*sha256"):
        load_model(saved)


def test_the_check_can_be_skipped_for_weights_edited_by_hand(saved, tiny_model):
    """verify_weights=False loads weights that differ from the stored hash, as they are."""
    state = tiny_model.state_dict()
    edited = {k: v.clone() for k, v in state.items()}
    edited["logit_scale"] += 1.0
    from safetensors.torch import save_file

    save_file(edited, str(saved / "model.safetensors"))
    with pytest.raises(CheckpointError):
        load_model(saved)
    model = load_model(saved, verify_weights=False)
    assert model.logit_scale.item() == pytest.approx(edited["logit_scale"].item())


def test_a_config_without_a_hash_loads(saved, tiny_model):
    """A hand-made folder (config.json without weights_sha256) loads without a check."""
    cfg = json.loads((saved / "config.json").read_text())
    del cfg["weights_sha256"]
    (saved / "config.json").write_text(json.dumps(cfg))
    model = load_model(saved)
    assert torch.equal(model.logit_scale, tiny_model.logit_scale)


def test_cli_embed_refuses_damaged_weights(saved, tmp_path, capsys):
    """`aef embed --checkpoint` with flipped weight bytes exits 2 with one line naming the file."""
    pytest.importorskip("rasterio")
    from aef.pipelines.cli import main
    from aef.pipelines.data import save_sample, synthetic_sample

    save_sample(tmp_path / "scene.npz", synthetic_sample(32, seed=0))
    _flip(saved / "model.safetensors")
    code = main(["embed", str(tmp_path / "scene.npz"), "--out", str(tmp_path / "o.tif"),
                 "--checkpoint", str(saved), "--no-progress", "--tile", "32"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "model.safetensors" in err and "sha256" in err
    assert not (tmp_path / "o.tif").exists()


class Foreign:
    """A class the safe loader does not know: a file holding it was not written by aef."""


@pytest.mark.parametrize("payload", [
    {"step": 1, "when": datetime.datetime(2024, 1, 1)},
    {"step": 1, "obj": Foreign()},
], ids=["datetime", "foreign class"])
def test_state_file_refused_by_the_safe_loader_gets_the_projects_message(tmp_path, payload):
    """A state.pt holding objects the weights_only loader refuses is a CheckpointError that names the
    file and never suggests weights_only=False."""
    torch.save(payload, tmp_path / "state.pt")
    with pytest.raises(CheckpointError) as info:
        load_state(tmp_path)
    msg = str(info.value)
    assert "state.pt" in msg and "not a training state" in msg
    assert "weights_only" not in msg and "False" not in msg
