"""aef.model.sources: the registry holds the table of docs/model.md §1.1."""

import pytest

from aef.model import sources as S

TABLE = {  # name: (bands, input, target, loss, weight)
    "sentinel2": (5, True, True, "l1", 1.0),
    "landsat": (7, True, True, "l1", 1.0),
    "sentinel1": (5, True, True, "l1", 1.0),
    "palsar2": (3, False, True, "l1", 1.0),
    "glo30": (4, False, True, "l1", 1.0),
    "gedi": (101, False, True, "l1", 1.0),
    "era5": (12, False, True, "l1", 1.0),
    "grace": (1, False, True, "l1", 0.5),
    "nlcd": (16, False, True, "ce", 0.5),
}


@pytest.mark.parametrize("name", list(TABLE))
def test_registry_rows(name):
    """Each source has the band count, role, loss kind and weight of the specification."""
    s = S.get(name)
    assert (s.channels, s.is_input, s.is_target, s.loss, s.weight) == TABLE[name]


def test_special_options():
    """Radar sources carry 2 metadata values; GRACE's loss is re-gridded to 1280 m (128 px)."""
    assert S.get("sentinel1").metadata_size == 2 and S.get("palsar2").metadata_size == 2
    assert S.get("grace").regrid == 128


def test_spec_overrides_and_custom_sources():
    """A different channel count keeps the row's loss/weight; an unknown name becomes an L1 source;
    an unknown name in get() and a bad count are errors."""
    assert S.spec("sentinel2", 5, "input") is S.get("sentinel2")
    nlcd = S.spec("nlcd", 8, "target")
    assert nlcd.channels == 8 and nlcd.loss == "ce" and nlcd.weight == 0.5
    custom = S.spec("drone", 3, "input")
    assert custom.channels == 3 and custom.is_input and custom.loss == "l1"
    with pytest.raises(KeyError, match="unknown source"):
        S.get("drone")
    with pytest.raises(ValueError, match="channel count"):
        S.spec("drone", 0, "input")
