"""The public path of the model: ``from aef.models import AEF`` (defined in :mod:`aef.model.aef`)."""

from .model.aef import AEF, Encoded

__all__ = ["AEF", "Encoded"]
