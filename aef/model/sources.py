"""The source registry (docs/model.md §1.1): one row per source; adding a source is adding a row."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Source:
    name: str
    bands: tuple[str, ...]
    is_input: bool
    is_target: bool
    loss: str = "l1"  # "l1" (continuous values) or "ce" (categorical: one logit per band)
    weight: float = 1.0
    metadata_size: int = 0
    # Area-average prediction and target over regrid x regrid pixels before the error
    # (clamped to the patch side when the patch is smaller).
    regrid: int = 1
    # Minimum error over planar shifts of up to this many pixels.
    shift: int = 0
    # A static source (DEM) has no meaningful time; its frames still carry a timestamp.
    static: bool = False
    # Preprocessing of the raw values (aef.model.preprocess): "optical", "sar" or "none".
    transform: str = "none"

    @property
    def channels(self) -> int:
        return len(self.bands)


def _stats(*names: str) -> tuple[str, ...]:
    return tuple(f"{n}_{s}" for n in names for s in ("mean", "min", "max"))


REGISTRY: dict[str, Source] = {
    s.name: s
    for s in (
        Source("sentinel2", ("B2", "B3", "B4", "B8", "B11"), is_input=True, is_target=True, transform="optical"),
        Source("landsat", ("B2", "B3", "B4", "B5", "B6", "B8", "B10"), is_input=True, is_target=True,
               transform="optical"),
        Source("sentinel1", ("VV", "VH", "HH", "HV", "angle"), is_input=True, is_target=True, metadata_size=2,
               transform="sar"),
        Source("palsar2", ("HH", "HV", "angle"), is_input=False, is_target=True, metadata_size=2,
               transform="sar"),
        Source("glo30", ("elevation", "slope", "sin_aspect", "cos_aspect"), is_input=False, is_target=True,
               static=True),
        Source("gedi", tuple(f"RH{i}" for i in range(101)), is_input=False, is_target=True),
        Source("era5", _stats("precip", "t2m", "dewpoint", "pressure"), is_input=False, is_target=True),
        # GRACE is 1280 m = 128 pixels of 10 m.
        Source("grace", ("lwe_thickness",), is_input=False, is_target=True, weight=0.5, regrid=128),
        Source("nlcd", tuple(f"class{i}" for i in range(16)), is_input=False, is_target=True, loss="ce",
               weight=0.5),
    )
}

INPUT_SOURCES: tuple[str, ...] = tuple(n for n, s in REGISTRY.items() if s.is_input)
TARGET_SOURCES: tuple[str, ...] = tuple(n for n, s in REGISTRY.items() if s.is_target)


def spec(name: str, channels: int, role: str) -> Source:
    """The model's view of a source with ``channels`` channels: the registry row when the counts
    agree; a registry row with generic band names (and no preprocessing, since the bands are no
    longer known) when they differ; a plain L1 source (weight 1, no metadata) for a name outside the
    registry. ``role`` is "input" or "target"."""
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise ValueError(f"{role} source {name!r}: expected a positive channel count, got {channels!r}")
    bands = tuple(f"band{i}" for i in range(channels))
    row = REGISTRY.get(name)
    if row is None:
        return Source(name, bands, is_input=role == "input", is_target=role == "target")
    return row if row.channels == channels else replace(row, bands=bands, transform="none")


def get(name: str) -> Source:
    if name not in REGISTRY:
        raise KeyError(f"unknown source {name!r}; known sources: {', '.join(REGISTRY)}")
    return REGISTRY[name]
