"""Model configuration: one dataclass, presets as data (AEF_MODEL.md §2)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .sources import INPUT_SOURCES, REGISTRY, TARGET_SOURCES

# (d_p, d_t, d_s, blocks) per preset, exactly the table of AEF_MODEL.md §2.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(d_p=16, d_t=32, d_s=64, blocks=2),
    "small": dict(d_p=64, d_t=256, d_s=512, blocks=6),
    "base": dict(d_p=96, d_t=384, d_s=768, blocks=8),
    "large": dict(d_p=128, d_t=512, d_s=1024, blocks=15),
}


def _channels(names) -> dict[str, int]:
    return {n: REGISTRY[n].channels for n in names}


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
    # Loss weights: loss = a * mean_i(w_i f_i) + b * uniformity + c * consistency + d * clip.
    loss_weights: dict[str, float] = field(
        default_factory=lambda: {"reconstruction": 1.0, "uniformity": 0.05, "consistency": 0.02, "clip": 0.001}
    )

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
