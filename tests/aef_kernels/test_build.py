"""The compiled extension aef_kernels._C: it imports, its build metadata tells the truth about this
machine, and a CUDA build's ptxas report covers every kernel for every arch with no spills in hot
kernels (docs/kernels.md §8.7 and §9)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

import aef_kernels
from aef_kernels import info
from aef_kernels.cuda import resources

ROOT = Path(__file__).resolve().parents[2]

# Every kernel family compiled into _C, and whether it is hot (must never spill). A new kernel has
# to be listed here, or the coverage test fails.
KERNEL_FAMILIES = {
    "vmf_normalize_fwd_regs": True,
    "vmf_normalize_fwd_rows": True,
    "vmf_normalize_bwd_regs": True,
    "vmf_normalize_bwd_rows": True,
    "batch_uniformity_fwd_dots": True,
    "batch_uniformity_fwd_sum": False,
    "batch_uniformity_bwd": True,
    "group_norm_fwd_partials": True,
    "group_norm_fwd_stats": False,
    "group_norm_fwd_apply": True,
    "group_norm_bwd_partials": True,
    "group_norm_bwd_coefs": False,
    "group_norm_bwd_params": False,
    "group_norm_bwd_apply": True,
    "axial_attention_fwd": True,
    "axial_attention_bwd_delta": True,
    "axial_attention_bwd": True,
}


def _load_setup():
    """setup.py's own rule for whether the CUDA kernels are built, so this test and the build agree."""
    spec = importlib.util.spec_from_file_location("aef_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _C():
    try:
        from aef_kernels import _C as ext
    except ImportError as exc:
        pytest.fail(f"aef_kernels._C is not built here ({exc}); run `pip install .` or "
                    "`python setup.py build_ext --inplace`")
    return ext


def _family(kernel: str) -> str | None:
    return next((f for f in KERNEL_FAMILIES if f in kernel), None)


def test_extension_reports_package_version():
    assert _C().__version__ == aef_kernels.__version__


def test_metadata_fields_are_consistent():
    ext = _C()
    assert isinstance(ext.with_cuda, bool)
    assert re.fullmatch(r"\S+ \d+(\.\d+)+", ext.cxx_compiler), ext.cxx_compiler
    if ext.with_cuda:
        assert re.fullmatch(r"\d+\.\d+(\.\d+)?", ext.nvcc_version), ext.nvcc_version
        assert ext.cuda_skip_reason == ""
        assert ext.cuda_archs and all(isinstance(a, str) for a in ext.cuda_archs)
        assert hasattr(ext, "launch_vmf_normalize_fwd")
    else:
        assert ext.nvcc_version == ""
        assert ext.cuda_archs == []
        assert ext.cuda_skip_reason
        assert not hasattr(ext, "launch_vmf_normalize_fwd")


def test_with_cuda_matches_this_machine():
    # Builds and tests run on the same machine (pip install . then pytest), so setup.py's decision
    # for the current environment must be the one the installed module was built with.
    setup = _load_setup()
    nvcc, reason = setup.cuda_plan()
    ext = _C()
    assert ext.with_cuda == (nvcc is not None), (
        f"aef_kernels._C was built with_cuda={ext.with_cuda} ({ext.cuda_skip_reason or 'nvcc ' + ext.nvcc_version}), "
        f"but this environment builds with_cuda={nvcc is not None} ({reason or nvcc}); rebuild with `pip install .`"
    )
    assert ext.cuda_skip_reason == reason


def test_skip_flag_wins_over_an_available_nvcc(monkeypatch, tmp_path):
    setup = _load_setup()
    fake = tmp_path / "bin" / "nvcc"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    assert setup.cuda_plan() == (str(fake), "")
    monkeypatch.setenv("AEF_SKIP_CUDA_BUILD", "1")
    assert setup.cuda_plan() == (None, "AEF_SKIP_CUDA_BUILD=1 is set")


def test_nvcc_is_found_through_cuda_home(monkeypatch, tmp_path):
    setup = _load_setup()
    monkeypatch.delenv("AEF_SKIP_CUDA_BUILD", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "cuda"))
    nvcc = tmp_path / "cuda" / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text("#!/bin/sh\n")
    nvcc.chmod(0o755)
    assert setup.find_nvcc() == str(nvcc)


@pytest.mark.parametrize("value, expected", [("", "80;90"), ("8.0, 9.0", "80;90"), ("90a", "90a"), ("75;80-real", "75;80-real")])
def test_cuda_archs_parsing(monkeypatch, value, expected):
    monkeypatch.setenv("AEF_CUDA_ARCHS", value)
    assert _load_setup().cuda_archs() == expected


def test_bad_cuda_archs_stop_the_build(monkeypatch):
    monkeypatch.setenv("AEF_CUDA_ARCHS", "sm_90")
    with pytest.raises(SystemExit, match="AEF_CUDA_ARCHS"):
        _load_setup().cuda_archs()


def test_cuda_archs_are_the_requested_ones():
    ext = _C()
    if not ext.with_cuda:
        pytest.skip(f"built without CUDA: {ext.cuda_skip_reason}")
    assert ext.cuda_archs == _load_setup().cuda_archs().split(";")
    if not os.environ.get("AEF_CUDA_ARCHS"):
        assert {"80", "90"} <= set(ext.cuda_archs)


def test_resource_report_is_installed_with_the_extension():
    ext = _C()
    header = resources.read_report().splitlines()[:2]
    assert header[0].startswith(f"# aef_kernels._C {ext.__version__} ")
    if ext.with_cuda:
        assert header[1] == f"# nvcc {ext.nvcc_version}, archs {','.join(ext.cuda_archs)}"
    else:
        assert header[1] == f"# built without CUDA: {ext.cuda_skip_reason}"
        assert resources.installed() == []


def _cuda_records():
    ext = _C()
    if not ext.with_cuda:
        pytest.skip(f"built without CUDA: {ext.cuda_skip_reason}")
    archs = {"sm_" + re.match(r"\d+[af]?", a)[0] for a in ext.cuda_archs}
    return archs, resources.installed()


def test_resource_report_lists_every_kernel_for_every_arch():
    archs, records = _cuda_records()
    by_arch: dict[str, set[str]] = {}
    for r in records:
        by_arch.setdefault(r.arch, set()).add(r.kernel)
    assert set(by_arch) == archs
    kernels = set.union(*by_arch.values())
    for arch, names in by_arch.items():
        assert names == kernels, f"{arch} lacks {sorted(kernels - names)}"
    unknown = sorted(k for k in kernels if _family(k) is None)
    assert not unknown, f"kernels missing from KERNEL_FAMILIES: {unknown}"
    missing = sorted(f for f in KERNEL_FAMILIES if not any(f in k for k in kernels))
    assert not missing, f"kernel families not in the ptxas report: {missing}"


def test_hot_kernels_do_not_spill():
    _, records = _cuda_records()
    spilling = [
        f"{r.kernel} ({r.arch}): {r.registers} registers, {r.spill_store_bytes} B spill stores, "
        f"{r.spill_load_bytes} B spill loads"
        for r in records
        if KERNEL_FAMILIES.get(_family(r.kernel)) and r.spills
    ]
    assert not spilling, "hot kernels spill:\n" + "\n".join(spilling)


PTXAS_SAMPLE = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z4hotPf' for 'sm_80'
ptxas info    : Function properties for _Z6helperv
    8 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Function properties for _Z4hotPf
    24 bytes stack frame, 16 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 255 registers, used 0 barriers, 360 bytes cmem[0]
ptxas info    : Compile time = 1.0 ms
ptxas info    : Compiling entry function '_Z4hotPf' for 'sm_90'
ptxas info    : Function properties for _Z4hotPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 0 barriers
"""


def test_report_parser_reads_entries_not_device_functions():
    records = resources.parse(PTXAS_SAMPLE)
    assert records == [
        resources.KernelResources("_Z4hotPf", "sm_80", 255, 24, 16, 12),
        resources.KernelResources("_Z4hotPf", "sm_90", 40, 0, 0, 0),
    ]
    assert [r.spills for r in records] == [True, False]


def test_report_parser_rejects_an_entry_without_its_spill_line():
    broken = "\n".join(line for line in PTXAS_SAMPLE.splitlines() if "24 bytes stack" not in line)
    with pytest.raises(ValueError, match="_Z4hotPf"):
        resources.parse(broken)


def _fake_install(site: Path, with_extension: bool) -> Path:
    """Another copy of the package under ``site``, as pip installs it; its _C is an empty file (it is
    looked for, never imported)."""
    package = site / "aef_kernels"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    built = package / f"_C{importlib.machinery.EXTENSION_SUFFIXES[0]}"
    if with_extension:
        built.write_bytes(b"")
    return built


@pytest.mark.parametrize("with_extension", [True, False], ids=["installed-build", "no-build"])
def test_info_names_an_installed_build_hidden_by_the_source_tree(monkeypatch, tmp_path, with_extension):
    """Where the imported package (the checkout, first on sys.path) has no extension but an installed
    copy later on sys.path has one, info says so, names it and says what to do; without such a copy
    it reports a plain "not built"."""
    built = _fake_install(tmp_path / "site-packages", with_extension)
    monkeypatch.setattr(sys, "path", [str(ROOT), str(tmp_path / "empty"), str(tmp_path / "site-packages")])
    # The imported copy has no extension.
    monkeypatch.setitem(sys.modules, "aef_kernels._C", None)
    monkeypatch.delattr(aef_kernels, "_C", raising=False)
    assert info.shadowed_builds() == ([built] if with_extension else [])
    message = info.build_info()["extension"]
    assert message.startswith("not built")
    if with_extension:
        assert str(built) in message and "shadowed" in message and "build_ext --inplace" in message
    else:
        assert "shadowed" not in message


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs a pseudo-terminal")
def test_build_messages_reach_the_terminal_while_pip_captures_the_output(tmp_path):
    """pip without -v keeps the build's stdout and stderr to itself; setup.py's messages still reach
    the terminal (the child's controlling terminal), and are also in the captured log."""
    import pty

    log = tmp_path / "captured.log"
    code = (f"import os, sys, importlib.util\n"
            f"fd = os.open({str(log)!r}, os.O_WRONLY | os.O_CREAT)\n"
            "os.dup2(fd, 1); os.dup2(fd, 2)\n"  # what pip does with the build's output
            f"spec = importlib.util.spec_from_file_location('aef_setup', {str(ROOT / 'setup.py')!r})\n"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            "m.tell('aef-kernels: a line for the terminal')\n")
    pid, master = pty.fork()
    if pid == 0:
        os.execv(sys.executable, [sys.executable, "-c", code])
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, seen.decode(errors="replace") + log.read_text()
    assert "aef-kernels: a line for the terminal" in seen.decode()
    assert "aef-kernels: a line for the terminal" in log.read_text()


@pytest.mark.parametrize("archs", ["90", "80;90", "75;80;86;90"])
@pytest.mark.parametrize("jobs", [1, 2, 16])
def test_cuda_build_notice_says_what_how_long_and_how_to_skip(archs, jobs):
    """The line before the CUDA build names the archs, gives a duration in minutes and the switch that
    skips the build; the estimate grows with the archs and does not grow with the jobs."""
    setup = _load_setup()
    notice = setup.cuda_build_notice("/usr/local/cuda/bin/nvcc", archs, jobs)
    assert all(f"sm_{a}" in notice for a in archs.split(";"))
    assert re.search(r"roughly \d+ min", notice) and "AEF_SKIP_CUDA_BUILD=1" in notice
    assert setup.build_estimate_s(archs, jobs) >= setup.build_estimate_s("90", jobs)
    assert setup.build_estimate_s(archs, jobs) <= setup.build_estimate_s(archs, 1)
