"""Integer-width and rounding limits of the Triton kernels that small interpreted shapes never reach.

- GroupNorm's backward divides by the element count of a group, HW * CG, which is 2^31 or more for
  a large frame: the product must be taken in int64. The interpreter computes int32 arguments in
  int32 (numpy), so calling the count helper there with such sizes shows a wrap as inf.
- Attention's sequence index is int32: the dispatcher must refuse S >= 2^31 sequences.
- ``tl.sqrt`` lowers to ``sqrt.approx.ftz``, which flushes a subnormal |x|^2 to zero (then a tiny eps
  gives inf or x / eps instead of a unit vector). The interpreter uses numpy's exact sqrt, so the fix
  is checked where it lives: in the PTX compiled for sm_90 (no GPU needed; Triton bundles ptxas's
  front end), plus the numerics with eps = 1e-30 and tiny inputs.
"""

import os
import sys
import textwrap

import pytest
import torch
import triton
import triton.language as tl

import aef_kernels as K
import subprocess_helpers
from aef_kernels import dispatch
from aef_kernels.triton import precision as tri_precision

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@triton.jit
def _inv_count_probe(out_ptr, HW, CG):
    tl.store(out_ptr, tri_precision._inv_count(HW, CG))


@pytest.mark.parametrize("hw, cg", [(3, 5), (2**20, 2**11), (2**20, 2**12), (3 * 2**20, 2**12)])
def test_group_norm_count_does_not_wrap(hw, cg):
    """The reciprocal group count of the GroupNorm backward equals 1 / (HW * CG) in float32, also
    where HW * CG is 2^31 or more (an int32 product wraps to 0 or a negative number there)."""
    out = torch.zeros(1, device=DEVICE)
    _inv_count_probe[(1,)](out, hw, cg)
    want = torch.tensor(1.0 / (hw * cg), dtype=torch.float32)
    torch.testing.assert_close(out.cpu()[0], want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("heads", [1, 2])
def test_attention_refuses_sequences_past_int32(heads):
    """With B*H*W*heads >= 2^31 sequences the Triton backend gives a reason naming the int32
    sequence index (even at T = 1, where packing keeps the program count far below the grid limit);
    one tile of sequences fewer is accepted."""
    def reasons(n_seq):
        w = n_seq // (2**16 * heads)
        q = torch.empty(1, 1, 1, 1, 1, 16, device=DEVICE).expand(1, 1, 2**16, w, heads, 16)
        return dispatch.not_supported_reasons("axial_time_attention", "triton", q, q, q, None, 0.25)

    big = reasons(2**31)
    assert any("sequences B*H*W*heads" in r for r in big), big
    ok = reasons(2**31 - 2**16 * heads)
    assert not any("sequences B*H*W*heads" in r for r in ok), ok


_PTX_SCRIPT = textwrap.dedent("""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from aef_kernels.triton import sphere
    for name in ("_vmf_normalize_fwd_kernel", "_vmf_normalize_bwd_kernel"):
        k = getattr(sphere, name)
        sig = {a: ("*fp32" if a.endswith("_ptr") else "fp32" if a == "eps" else
                   "constexpr" if a.startswith("BLOCK") else "i32") for a in k.arg_names}
        src = ASTSource(k, sig, constexprs={"BLOCK_R": 16, "BLOCK_D": 64})
        ptx = triton.compile(src, target=GPUTarget("cuda", 90, 64)).asm["ptx"]
        print(name, " ".join(sorted({l.split()[0] for l in ptx.splitlines() if "sqrt" in l})))
""")


def test_vmf_normalize_compiles_a_correctly_rounded_sqrt():
    """The PTX of both vmf_normalize kernels for sm_90 takes the norm with sqrt.rn (no flush of
    subnormals), never sqrt.approx."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    out = subprocess_helpers.run([sys.executable, "-c", _PTX_SCRIPT], env=env, capture_output=True, text=True,
                                 timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2, out.stdout
    for line in lines:
        assert "sqrt.rn.f32" in line and "approx" not in line, line


@pytest.mark.parametrize("scale", [1e-20, 1e-30, 1e-38])
@pytest.mark.parametrize("D", [3, 64])
def test_vmf_normalize_tiny_inputs_and_eps(scale, D):
    """With eps = 1e-30 and inputs of magnitude down to 1e-38 (squares subnormal or zero), the Triton
    result and its gradient match F.normalize's and contain no inf or NaN."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(5, D, generator=gen) * scale).to(DEVICE)
    g = torch.randn(5, D, generator=gen).to(DEVICE)
    results = []
    for backend in ("reference", "triton"):
        xl = x.clone().requires_grad_()
        y = K.vmf_normalize(xl, eps=1e-30, backend=backend)
        (dx,) = torch.autograd.grad(y, xl, g)
        results.append((y.detach(), dx))
    (y_ref, dx_ref), (y, dx) = results
    assert torch.isfinite(y).all() and torch.isfinite(dx).all()
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-4, atol=1e-4 * dx_ref.abs().max().item())
