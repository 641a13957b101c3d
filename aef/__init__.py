"""AlphaEarth Foundations: the STP encoder model on top of ``aef_kernels`` (see docs/model.md)."""

from .model.config import PRESETS, AEFConfig
from .model.encoder import STPBlock, STPEncoder
from .model.aef import AEF, Encoded
from .model.sources import REGISTRY, Source

__all__ = ["AEF", "AEFConfig", "Encoded", "PRESETS", "REGISTRY", "STPBlock", "STPEncoder", "Source"]
