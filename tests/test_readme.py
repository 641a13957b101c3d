"""The README's install commands work on a fresh machine: the package is not on a package index."""

import re
import shlex
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _pip_installs() -> list[list[str]]:
    """The arguments of every ``pip install`` in the README, in code blocks or inline code."""
    found = []
    for match in re.finditer(r"pip install ([^`\n&#]+)", README):
        found.append(shlex.split(match.group(1)))
    return found


def test_every_pip_install_names_the_checkout_or_the_pytorch_index():
    """Each ``pip install`` installs the checkout (``.``, or ``.[extras]`` with extras that
    pyproject.toml defines), or torch from the PyTorch index; never ``aef-kernels`` by name."""
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    installs = _pip_installs()
    assert installs
    for args in installs:
        targets = [a for a in args if not a.startswith("-") and not a.startswith("https://")]
        if targets == ["torch"]:
            assert "--index-url" in args, args
            continue
        assert len(targets) == 1, args
        m = re.fullmatch(r"\.(?:\[([\w,]+)\])?", targets[0])
        assert m, f"`pip install {' '.join(args)}` does not install the checkout"
        assert set((m.group(1) or "").split(",")) - {""} <= extras, args


def test_the_quick_start_says_how_to_get_a_cpu_torch():
    """Without a GPU, the first command installs the CPU build of PyTorch from its own index."""
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in quick
