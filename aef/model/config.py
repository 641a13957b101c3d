"""Model configuration: one dataclass, presets as data (docs/model.md §5)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional

from .sources import INPUT_SOURCES, REGISTRY, TARGET_SOURCES

# (d_p, d_t, d_s, blocks) per preset, exactly the table of docs/model.md §5.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(d_p=16, d_t=32, d_s=64, blocks=2),
    "small": dict(d_p=64, d_t=256, d_s=512, blocks=6),
    "base": dict(d_p=96, d_t=384, d_s=768, blocks=8),
    "large": dict(d_p=128, d_t=512, d_s=1024, blocks=15),
}


def _channels(names) -> dict[str, int]:
    return {n: REGISTRY[n].channels for n in names}


LOSS_TERMS = ("reconstruction", "uniformity", "consistency", "clip")
# Integer fields and their smallest allowed value.
_INT_MIN = dict(d_p=2, d_t=1, d_s=1, blocks=1, head_dim=1, mlp_ratio=1, embed_dim=1, timecode_periods=1,
                decoder_time_freqs=0, decoder_hidden=1, text_dim=1, text_hidden=1)
_POSITIVE_FLOATS = ("timecode_min_days", "timecode_max_days", "kappa", "norm_eps")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_sources(name: str, value, allow_empty: bool) -> None:
    if not isinstance(value, dict):
        raise TypeError(f"AEFConfig.{name}: expected a dict of source name -> channel count, got "
                        f"{type(value).__name__}")
    if not value and not allow_empty:
        raise ValueError(f"AEFConfig.{name}: expected at least one source")
    for k, n in value.items():
        if not isinstance(k, str) or not k:
            raise TypeError(f"AEFConfig.{name}: source names must be non-empty strings, got {k!r}")
        if not _is_int(n) or n < 1:
            raise ValueError(f"AEFConfig.{name}[{k!r}]: expected a positive int channel count, got {n!r}")


@dataclass(frozen=True)
class AEFConfig:
    d_p: int = 64
    d_t: int = 256
    d_s: int = 512
    blocks: int = 6
    head_dim: int = 64
    mlp_ratio: int = 4
    embed_dim: int = 64
    # Geometric periods from 1 day to ~10,000 days; the annual cycle is added on top.
    timecode_periods: int = 16
    timecode_min_days: float = 1.0
    timecode_max_days: float = 10_000.0
    # Sinusoids of the target time's position within its period, for the implicit decoders.
    decoder_time_freqs: int = 4
    decoder_hidden: int = 512
    kappa: float = 8000.0
    text_dim: int = 768
    text_hidden: int = 512
    # Source name -> channel count; names in the registry take their role, loss and weight from it.
    input_sources: dict[str, int] = field(default_factory=lambda: _channels(INPUT_SOURCES))
    decode_sources: dict[str, int] = field(default_factory=lambda: _channels(TARGET_SOURCES))
    norm_eps: float = 1e-5
    # Per-source input statistics (aef.model.preprocess.Statistics.to_dict()); None: inputs are model values.
    statistics: Optional[dict] = None
    # Loss weights: loss = a * mean_i(w_i f_i) + b * uniformity + c * consistency + d * clip.
    loss_weights: dict[str, float] = field(
        default_factory=lambda: {"reconstruction": 1.0, "uniformity": 0.05, "consistency": 0.02, "clip": 0.001}
    )

    def __post_init__(self):
        """Every field checked once, here, so a bad value fails at construction naming the field
        instead of deep inside torch (presets, overrides and saved configs all come through here)."""
        for name, low in _INT_MIN.items():
            v = getattr(self, name)
            if not _is_int(v):
                raise TypeError(f"AEFConfig.{name}: expected an int, got {type(v).__name__} {v!r}")
            if v < low:
                raise ValueError(f"AEFConfig.{name}: expected an int >= {low}, got {v}")
        for name in _POSITIVE_FLOATS:
            v = getattr(self, name)
            if not _is_real(v):
                raise TypeError(f"AEFConfig.{name}: expected a number, got {type(v).__name__} {v!r}")
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"AEFConfig.{name}: expected a finite number > 0, got {v}")
        if self.timecode_max_days <= self.timecode_min_days:
            raise ValueError(f"AEFConfig.timecode_max_days: expected more than timecode_min_days = "
                             f"{self.timecode_min_days}, got {self.timecode_max_days}")
        for name in ("d_p", "d_t", "d_s"):
            width = getattr(self, name)
            heads = self.num_heads(width)
            if width % heads:
                raise ValueError(f"AEFConfig.{name}: {width} is not divisible by its {heads} attention heads "
                                 f"(width // head_dim with head_dim = {self.head_dim})")
        if self.d_p % self.precision_groups:
            raise ValueError(f"AEFConfig.d_p: {self.d_p} is not divisible by its {self.precision_groups} "
                             "GroupNorm groups (32 from d_p = 64 on, d_p / 2 below; use a multiple of 32, or "
                             "an even number below 64)")
        _check_sources("input_sources", self.input_sources, allow_empty=False)
        _check_sources("decode_sources", self.decode_sources, allow_empty=True)
        w = self.loss_weights
        if not isinstance(w, dict) or set(w) != set(LOSS_TERMS):
            got = sorted(w) if isinstance(w, dict) else type(w).__name__
            raise ValueError(f"AEFConfig.loss_weights: expected a dict with exactly the keys "
                             f"{', '.join(LOSS_TERMS)}, got {got}")
        for k, v in w.items():
            if not _is_real(v) or not math.isfinite(v) or v < 0:
                raise ValueError(f"AEFConfig.loss_weights[{k!r}]: expected a finite number >= 0, got {v!r}")
        if self.statistics is not None:
            from .preprocess import Statistics

            Statistics.from_dict(self.statistics, "AEFConfig.statistics")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "AEFConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        """Plain JSON-serialisable values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AEFConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"AEFConfig: unknown field(s) {', '.join(unknown)}")
        return cls(**d)

    def replace(self, **changes) -> "AEFConfig":
        return dataclasses.replace(self, **changes)

    def num_heads(self, width: int) -> int:
        """Heads of width ``head_dim`` where the width allows, else one head of the whole width."""
        return max(1, width // self.head_dim)

    @property
    def timecode_dim(self) -> int:
        return 2 * (self.timecode_periods + 1)

    @property
    def precision_groups(self) -> int:
        return 32 if self.d_p >= 64 else self.d_p // 2
