"""Ahead-of-time compilation of every Triton kernel configuration for sm_80 and sm_90, without a GPU.

The compilation runs once per session in a child process without the interpreter (see
``aef_kernels.triton.aot``); the register and spill table is printed and written to
``aot_report.txt`` in the pytest temporary directory.
"""

import importlib

import pytest

from aef_kernels.triton import OP_MODULES, aot


def _module_specs():
    return {m: importlib.import_module(f"aef_kernels.triton.{m}").aot_specs() for m in OP_MODULES}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    results = aot.run_isolated(aot.TARGETS)
    report = tmp_path_factory.mktemp("aot") / "aot_report.txt"
    report.write_text("\n".join(r.row() for r in results) + "\n")
    print(f"\nAOT report ({len(results)} compilations): {report}")
    for r in results:
        print(r.row())
    return results


def test_every_module_lists_its_configurations():
    """Each op module of the Triton backend exposes aot_specs() with at least one spec, uniquely
    named, whose signature covers every kernel argument."""
    names = set()
    for module, specs in _module_specs().items():
        assert specs, f"{module}.aot_specs() is empty"
        for spec in specs:
            assert spec.name not in names, f"duplicate AOT spec name {spec.name}"
            names.add(spec.name)
            assert list(spec.signature) == list(spec.kernel.arg_names), spec.name


def test_every_configuration_compiles_and_fits(results):
    """Every spec of every module compiles for sm_80 and sm_90, and its shared memory fits the
    target's per-block limit."""
    expected = {(s.name, cc) for specs in _module_specs().values() for s in specs for cc in aot.TARGETS}
    assert {(r.name, r.cc) for r in results} == expected
    too_big = [r.row() for r in results if not r.fits]
    assert not too_big, "shared memory over the target's limit:\n" + "\n".join(too_big)
