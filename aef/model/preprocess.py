"""Per-source input preprocessing: the one place where raw values become model values and back.

Each row of the source registry (:mod:`aef.model.sources`) names its transform:

- ``"optical"`` (sentinel2, landsat): ``log(x + 1)``, then a per-band z-score with the model's
  statistics, clipped to +-6 sigma. Negative values are invalid (reflectances and digital numbers
  are never negative; a negative value is fill or a processing artefact).
- ``"sar"`` (sentinel1, palsar2): backscatter bands in dB, z-scored like optical bands; values
  below -30 dB or above +10 dB are invalid (noise floor and saturation). Linear inputs are converted
  on read (:func:`linear_to_db`); the model itself always receives dB. The ``angle`` band (incidence
  angle in degrees) becomes radians and is not normalised.
- ``"none"``: values are used as given.

The statistics are per source and per band, computed *after* the transform (``aef stats``,
:mod:`aef.pipelines.stats`) and kept in the model's config, so a checkpoint carries the normalisation it was
trained with. A model without statistics (``AEFConfig.statistics is None``) takes its inputs as
already in model space: no transform is applied, only invalid values are removed. That is the
convention of the synthetic data (``aef.pipelines.data.synthetic``), which is generated in model space.

Training (inputs and reconstruction targets), embedding and the data loaders all go through this
module: :meth:`aef.models.AEF` applies :func:`apply` to every input and target source, the loss is
computed in model space, and :func:`invert` brings decoded values back to the source's units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np
import torch

from . import sources as _sources

TRANSFORMS = ("none", "optical", "sar")
FORMAT = "aef-statistics/1"
CLIP_SIGMA = 6.0
DB_MIN, DB_MAX = -30.0, 10.0
# Standard deviations below this (a constant band) are raised to it, so the z-score stays finite.
MIN_STD = 1e-6

# Band kinds: what one band of a transform does.
IDENTITY, LOG, DB, ANGLE = "identity", "log", "db", "angle"
NORMALISED_KINDS = (LOG, DB)


def band_kinds(source: _sources.Source) -> tuple[str, ...]:
    """The kind of every band of ``source``, from its registry transform."""
    if source.transform == "optical":
        return (LOG,) * source.channels
    if source.transform == "sar":
        return tuple(ANGLE if b == "angle" else DB for b in source.bands)
    if source.transform == "none":
        return (IDENTITY,) * source.channels
    raise ValueError(f"source {source.name!r}: unknown transform {source.transform!r} (known: {', '.join(TRANSFORMS)})")


def needs_statistics(source: _sources.Source) -> bool:
    return any(k in NORMALISED_KINDS for k in band_kinds(source))


def linear_to_db(x: np.ndarray) -> np.ndarray:
    """Linear backscatter (power) -> dB; zero, negative and non-finite values become NaN."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > 0, np.float32(10.0) * np.log10(np.where(x > 0, x, np.float32(1))), np.float32(np.nan))


def _kind_masks(kinds: tuple[str, ...], device) -> dict[str, torch.Tensor]:
    k = np.array(kinds)
    return {kind: torch.from_numpy(k == kind).to(device) for kind in (LOG, DB, ANGLE)}


def transform(x: torch.Tensor, valid: torch.Tensor, source: _sources.Source) -> tuple[torch.Tensor, torch.Tensor]:
    """The source's transform without normalisation: (..., C) raw values and (..., C) validity ->
    transformed values (NaN where invalid) and the validity, narrowed by the transform's own rule."""
    kinds = band_kinds(source)
    m = _kind_masks(kinds, x.device)
    x = x.float()
    valid = valid & torch.isfinite(x)
    valid = valid & ~(m[LOG] & (x < 0))
    valid = valid & ~(m[DB] & ((x < DB_MIN) | (x > DB_MAX)))
    safe = torch.where(valid, x, x.new_zeros(()))
    y = torch.where(m[LOG], torch.log1p(safe), safe)
    y = torch.where(m[ANGLE], y * (math.pi / 180.0), y)
    return torch.where(valid, y, y.new_full((), math.nan)), valid


@dataclass(frozen=True)
class SourceStatistics:
    """Per-band statistics of one source, after its transform."""

    transform: str
    bands: tuple[str, ...]
    count: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"transform": self.transform, "bands": list(self.bands), "count": list(self.count),
                "mean": list(self.mean), "std": list(self.std)}


class Statistics:
    """Per-source statistics, as stored in ``AEFConfig.statistics`` and written by ``aef stats``::

        {"format": "aef-statistics/1",
         "sources": {"landsat": {"transform": "optical", "bands": ["B2", ...], "count": [...],
                                 "mean": [...], "std": [...]}}}

    A band with no valid value in the data (count 0) has mean 0 and std 1.
    """

    def __init__(self, sources: Mapping[str, SourceStatistics]):
        self.sources = dict(sources)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "sources": {n: s.to_dict() for n, s in self.sources.items()}}

    @classmethod
    def from_dict(cls, d, where: str = "statistics") -> "Statistics":
        if not isinstance(d, Mapping) or d.get("format") != FORMAT or not isinstance(d.get("sources"), Mapping):
            raise ValueError(f"{where}: expected an object with \"format\": \"{FORMAT}\" and \"sources\" "
                             "(as written by aef stats)")
        out = {}
        for name, s in d["sources"].items():
            w = f"{where}: sources.{name}"
            try:
                bands = tuple(str(b) for b in s["bands"])
                fields = {k: tuple(s[k]) for k in ("count", "mean", "std")}
                st = SourceStatistics(str(s["transform"]), bands, tuple(int(c) for c in fields["count"]),
                                      tuple(float(v) for v in fields["mean"]), tuple(float(v) for v in fields["std"]))
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{w}: expected transform, bands, count, mean and std ({type(e).__name__}: {e})") from None
            if not len(st.bands) == len(st.count) == len(st.mean) == len(st.std):
                raise ValueError(f"{w}: bands, count, mean and std must have one entry per band")
            if not all(math.isfinite(v) for v in st.mean + st.std) or min(st.std, default=1.0) <= 0:
                raise ValueError(f"{w}: mean and std must be finite, std positive")
            out[str(name)] = st
        return cls(out)

    @classmethod
    def load(cls, path) -> "Statistics":
        import json
        from pathlib import Path

        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{p}: cannot read the statistics ({type(e).__name__}: {e})") from None
        return cls.from_dict(d, str(p))

    def for_source(self, source: _sources.Source) -> SourceStatistics:
        """The statistics of ``source``, checked against its registry row; a clear error if missing."""
        st = self.sources.get(source.name)
        if st is None:
            raise ValueError(f"the model's statistics do not cover source {source.name!r} (they cover "
                             f"{', '.join(self.sources) or 'no source'}); compute them with `aef stats` on data "
                             f"that has {source.name}")
        if st.transform != source.transform or len(st.bands) != source.channels:
            raise ValueError(f"the model's statistics of {source.name!r} were computed with transform "
                             f"{st.transform!r} over {len(st.bands)} bands; the source needs {source.transform!r} "
                             f"over {source.channels} bands")
        return st

    def check_covers(self, specs: Mapping[str, _sources.Source]) -> None:
        for src in specs.values():
            if needs_statistics(src):
                self.for_source(src)


def _mean_std(st: SourceStatistics, source: _sources.Source, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    kinds = band_kinds(source)
    norm = torch.tensor([k in NORMALISED_KINDS for k in kinds], device=device)
    mean = torch.tensor(st.mean, dtype=torch.float32, device=device)
    std = torch.tensor(st.std, dtype=torch.float32, device=device).clamp_min(MIN_STD)
    return norm, mean, std


def apply(x: torch.Tensor, valid: torch.Tensor, source: _sources.Source,
          statistics: Optional[Statistics]) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw values -> model values: (..., C) data and per-band validity -> (values, NaN where invalid;
    validity). Without statistics the values are taken as model values (see the module docstring)."""
    if statistics is None:
        valid = valid & torch.isfinite(x)
        return torch.where(valid, x, x.new_full((), math.nan)), valid
    y, valid = transform(x, valid, source)
    if needs_statistics(source):
        norm, mean, std = _mean_std(statistics.for_source(source), source, x.device)
        z = ((y - mean) / std).clamp(-CLIP_SIGMA, CLIP_SIGMA)
        y = torch.where(norm, z, y)
    return y.to(x.dtype), valid


def invert(y: torch.Tensor, source: _sources.Source, statistics: Optional[Statistics]) -> torch.Tensor:
    """Model values -> the source's units (optical: the raw scale; SAR: dB; angles: degrees)."""
    if statistics is None:
        return y
    kinds = band_kinds(source)
    m = _kind_masks(kinds, y.device)
    out = y.float()
    if needs_statistics(source):
        norm, mean, std = _mean_std(statistics.for_source(source), source, y.device)
        out = torch.where(norm, out * std + mean, out)
    out = torch.where(m[LOG], torch.expm1(out), out)
    out = torch.where(m[ANGLE], out * (180.0 / math.pi), out)
    return out.to(y.dtype)


def preprocess_inputs(inputs, specs: Mapping[str, _sources.Source], statistics: Optional[Statistics]):
    """:func:`apply` to every source of an :class:`aef.model.inputs.Inputs`; pixel masks are narrowed to
    pixels with at least one valid band after the transform."""
    from dataclasses import replace

    data, bands, masks = {}, {}, {}
    for n in inputs.names:
        data[n], bands[n] = apply(inputs.data[n], inputs.band_valid[n], specs[n], statistics)
        masks[n] = inputs.masks[n] & bands[n].any(dim=-1)
    return replace(inputs, data=data, band_valid=bands, masks=masks)
