"""AEFConfig refuses every invalid field at construction, naming it, on every way in: the
constructor, presets with overrides, saved configs, and ``aef train --override``."""

import json

import pytest

from aef.pipelines.cli import main
from aef.model.config import PRESETS, AEFConfig

BAD = [
    ("blocks", -1, "blocks"),
    ("blocks", 0, "blocks"),
    ("blocks", 1.5, "blocks"),
    ("blocks", True, "blocks"),
    ("d_p", "16", "d_p"),
    ("d_p", 0, "d_p"),
    ("d_p", 15, "d_p"),  # odd: C/2 GroupNorm groups do not divide it
    ("d_p", 80, "d_p"),  # 32 groups do not divide 80
    ("d_t", 100, "d_t"),  # with head_dim 32: 3 heads, which do not divide 100
    ("d_s", -512, "d_s"),
    ("head_dim", 0, "head_dim"),
    ("mlp_ratio", 0, "mlp_ratio"),
    ("embed_dim", 0, "embed_dim"),
    ("timecode_periods", 0, "timecode_periods"),
    ("timecode_min_days", 0.0, "timecode_min_days"),
    ("timecode_max_days", float("nan"), "timecode_max_days"),
    ("timecode_max_days", 0.5, "timecode_max_days"),
    ("decoder_time_freqs", -1, "decoder_time_freqs"),
    ("decoder_hidden", 0, "decoder_hidden"),
    ("kappa", -1.0, "kappa"),
    ("kappa", float("inf"), "kappa"),
    ("kappa", "8000", "kappa"),
    ("text_dim", 0, "text_dim"),
    ("text_hidden", -3, "text_hidden"),
    ("norm_eps", 0.0, "norm_eps"),
    ("input_sources", {}, "input_sources"),
    ("input_sources", {"sentinel2": 0}, "input_sources"),
    ("input_sources", {"sentinel2": "5"}, "input_sources"),
    ("input_sources", ["sentinel2"], "input_sources"),
    ("decode_sources", {"gedi": -1}, "decode_sources"),
    ("loss_weights", {"reconstruction": 1.0}, "loss_weights"),
    ("loss_weights", {"reconstruction": 1.0, "uniformity": -0.1, "consistency": 0.0, "clip": 0.0}, "loss_weights"),
    ("loss_weights", {"reconstruction": 1.0, "uniformity": 0.1, "consistency": 0.0, "clip": 0.0, "extra": 1.0},
     "loss_weights"),
]


def _case(field, value):
    return {"d_t": value, "head_dim": 32} if field == "d_t" else {field: value}


@pytest.mark.parametrize("field,value,name", BAD, ids=[f"{f}={v!r}" for f, v, _ in BAD])
def test_constructor_refuses_an_invalid_field_naming_it(field, value, name):
    """Each invalid value (wrong type, out of range, not divisible by heads or groups) raises a
    ValueError or TypeError at construction whose message starts with the field's name."""
    with pytest.raises((ValueError, TypeError), match=rf"^AEFConfig\.{name}\b"):
        AEFConfig(**_case(field, value))


@pytest.mark.parametrize("field,value,name", BAD[:8], ids=[f"{f}={v!r}" for f, v, _ in BAD[:8]])
def test_presets_overrides_and_saved_configs_are_validated(field, value, name):
    """from_preset and from_dict go through the same validation."""
    with pytest.raises((ValueError, TypeError), match=rf"AEFConfig\.{name}\b"):
        AEFConfig.from_preset("tiny", **_case(field, value))
    with pytest.raises((ValueError, TypeError), match=rf"AEFConfig\.{name}\b"):
        AEFConfig.from_dict({**AEFConfig().to_dict(), **_case(field, value)})


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_and_the_default_are_valid(name):
    """The shipped presets pass their own validation, and their dicts round-trip."""
    c = AEFConfig.from_preset(name)
    assert AEFConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    AEFConfig()


@pytest.mark.parametrize("override,name", [('{"blocks": -1}', "blocks"), ('{"d_p": "16"}', "d_p"),
                                           ('{"kappa": 0}', "kappa")])
def test_train_override_is_validated_before_training(override, name, tmp_path, capsys):
    """`aef train --override` with an invalid field exits 2 with one line naming the field, and
    writes no checkpoint."""
    code = main(["train", "--run-dir", str(tmp_path / "run"), "--preset", "tiny", "--steps", "1",
                 "--synthetic", "2", "--side", "16", "--batch-size", "2", "--no-progress", "--override", override])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"AEFConfig.{name}" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()
