"""aef.model.config: presets as data, head counts and serialisation."""

import pytest

from aef.model.config import PRESETS, AEFConfig

TABLE = {  # docs/model.md §5
    "tiny": (16, 32, 64, 2),
    "small": (64, 256, 512, 6),
    "base": (96, 384, 768, 8),
    "large": (128, 512, 1024, 15),
}


@pytest.mark.parametrize("name", list(TABLE))
def test_presets_match_the_specification(name):
    """Every preset has exactly the widths and depth of the specification's table."""
    c = AEFConfig.from_preset(name)
    assert (c.d_p, c.d_t, c.d_s, c.blocks) == TABLE[name]
    assert set(PRESETS) == set(TABLE)


@pytest.mark.parametrize("width,heads", [(16, 1), (32, 1), (64, 1), (256, 4), (1024, 16)])
def test_head_dim_is_64_unless_the_width_is_smaller(width, heads):
    """Heads have width 64 where possible, else there is one head of the whole width."""
    assert AEFConfig().num_heads(width) == heads


@pytest.mark.parametrize("d_p,groups", [(16, 8), (32, 16), (64, 32), (128, 32)])
def test_precision_groupnorm_groups(d_p, groups):
    """GroupNorm uses 32 groups, or C/2 when C < 64."""
    assert AEFConfig(d_p=d_p).precision_groups == groups


def test_dict_round_trip_and_unknown_fields():
    """to_dict/from_dict round-trip; an unknown preset or field is a clear ValueError."""
    c = AEFConfig.from_preset("tiny", blocks=1)
    assert AEFConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="unknown preset"):
        AEFConfig.from_preset("huge")
    with pytest.raises(ValueError, match="nonsense"):
        AEFConfig.from_preset("tiny", nonsense=1)
