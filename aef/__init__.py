"""AlphaEarth Foundations: the STP encoder model on top of ``aef_kernels`` (see docs/model.md)."""

from .config import PRESETS, AEFConfig
from .encoder import STPBlock, STPEncoder
from .models import AEF, Encoded
from .sources import REGISTRY, Source

__all__ = ["AEF", "AEFConfig", "Encoded", "PRESETS", "REGISTRY", "STPBlock", "STPEncoder", "Source"]
