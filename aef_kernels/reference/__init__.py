"""The pure-PyTorch reference of every op: the single source of truth for tests, fallbacks and
benchmarks. Plain PyTorch, no custom-op wrapper, so Dynamo traces through it and Inductor fuses it.

Functions take the validated arguments of the public API by name (the fields of each op's inputs
record, ``aef_kernels.ops``), one module per op family; every spec names its reference, and
``aef_kernels.reference.<op>`` is that function.
"""


def __getattr__(name: str):
    from ..ops import BY_NAME

    if name in BY_NAME:
        return BY_NAME[name].reference
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
