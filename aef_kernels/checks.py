"""Argument checks shared by the public functions.

Every check raises before any kernel launches, with a message naming the argument and what was
expected. Checks read only tensor metadata, so Dynamo turns them into guards.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def listing(values: Iterable) -> str:
    """Values for a message, comma-separated, dtypes without their "torch." prefix."""
    return ", ".join(str(v).replace("torch.", "") for v in values)


def tensor(name: str, t, ndim: int | None = None, layout: str | None = None) -> None:
    """``t`` is a floating-point tensor of rank ``ndim`` (``layout`` names the axes for messages)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a floating dtype ({listing(FLOAT_DTYPES)}), got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        want = f"{ndim}-d {layout}" if layout else f"{ndim}-d"
        raise ValueError(f"{name}: expected a {want} tensor, got shape {tuple(t.shape)}")


def optional_tensor(name: str, t, ndim: int | None = None, layout: str | None = None) -> None:
    if t is not None:
        tensor(name, t, ndim, layout)


def shape(name: str, t: torch.Tensor, expected: Sequence[int | None], layout: str) -> None:
    """``t.shape`` matches ``expected``; ``None`` entries match any size."""
    got = tuple(t.shape)
    if len(got) != len(expected) or any(e is not None and e != g for e, g in zip(expected, got)):
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise ValueError(f"{name}: expected shape {layout} = {want}, got {got}")


def same_dtype(**tensors: torch.Tensor) -> None:
    items = [(k, v) for k, v in tensors.items() if v is not None]
    dtypes = {v.dtype for _, v in items}
    if len(dtypes) > 1:
        desc = ", ".join(f"{k}: {v.dtype}" for k, v in items)
        raise TypeError(f"expected one dtype for {', '.join(k for k, _ in items)}; got {desc}")


def same_device(**tensors) -> None:
    items = [(k, v) for k, v in tensors.items() if isinstance(v, torch.Tensor)]
    devices = {v.device for _, v in items}
    if len(devices) > 1:
        desc = ", ".join(f"{k}: {v.device}" for k, v in items)
        raise ValueError(f"expected all tensors on one device; got {desc}")


def last_dim_contiguous(name: str, t: torch.Tensor) -> None:
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(
            f"{name}: the last dimension must be contiguous (stride 1), got strides {tuple(t.stride())}"
        )


def nonempty(name: str, t: torch.Tensor, dims: Sequence[str] = ()) -> None:
    """Every dimension of ``t`` is at least 1, the rule of every op for empty inputs: a ValueError
    naming the dimension (``dims`` labels them in order; unlabelled ones are "dimension i"), never a
    backend's ZeroDivisionError or an empty result some callers would not expect."""
    for i, size in enumerate(t.shape):
        if size == 0:
            label = dims[i] if i < len(dims) else f"dimension {i}"
            raise ValueError(f"{name}: {label} = 0 in shape {tuple(t.shape)}; the ops take no empty inputs "
                             "(every dimension must be at least 1)")


def nonempty_last_dim(name: str, t: torch.Tensor) -> None:
    if t.shape[-1] == 0:
        raise ValueError(f"{name}: the last dimension (D) must be at least 1, got shape {tuple(t.shape)}")


def positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")


def divides(name: str, divisor: int, what: str, value: int) -> None:
    positive_int(name, divisor)
    if value % divisor:
        raise ValueError(f"{name}={divisor} must divide {what}={value}")


def key_padding_mask(mask, batch: int, time: int, height: int, width: int, device: torch.device) -> None:
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"key_padding_mask: expected a bool tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"key_padding_mask: expected dtype torch.bool (True = valid), got {mask.dtype}")
    if tuple(mask.shape) not in ((batch, time), (batch, time, height, width)):
        raise ValueError(
            f"key_padding_mask: expected shape (B, T) = ({batch}, {time}) or (B, T, H, W) = "
            f"({batch}, {time}, {height}, {width}), got {tuple(mask.shape)}"
        )
    if mask.device != device:
        raise ValueError(f"key_padding_mask: expected device {device}, got {mask.device}")
