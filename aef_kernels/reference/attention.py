"""Reference axial time attention: PyTorch SDPA on views of the (B, T, H, W, heads, d) layout."""

from __future__ import annotations

import torch
import torch.nn.functional as F


# Fused SDPA kernels put batch x heads on a CUDA grid axis that stops at 65,535; calls are split so
# that no single call sees more sequences than this.
MAX_SEQUENCES_PER_CALL = 65_535


def _to_sequences(x: torch.Tensor) -> torch.Tensor:
    """(B, T, H, W, heads, d) -> (B, H*W*heads, T, d); a view for contiguous inputs."""
    B, T, H, W, nh, d = x.shape
    return x.permute(0, 2, 3, 4, 1, 5).reshape(B, H * W * nh, T, d)


def _sequence_mask(mask: torch.Tensor, H: int, W: int, nh: int) -> torch.Tensor:
    """Key mask (B, T) or (B, T, H, W) -> bool (B, 1 or H*W*heads, 1, T), True = attend."""
    if mask.dim() == 2:
        return mask[:, None, None, :]
    B, T = mask.shape[:2]
    m = mask.permute(0, 2, 3, 1)[:, :, :, None, :].expand(B, H, W, nh, T)
    return m.reshape(B, H * W * nh, 1, T)


def axial_time_attention(q, k, v, key_padding_mask, scale):
    B, Tq, H, W, nh, d = q.shape
    qs, ks, vs = _to_sequences(q), _to_sequences(k), _to_sequences(v)  # (B, S, T, d)
    S = qs.shape[1]
    mask = valid = None
    if key_padding_mask is not None:
        mask = _sequence_mask(key_padding_mask, H, W, nh)  # (B, 1|S, 1, T)
        valid = mask.any(dim=-1, keepdim=True)  # (B, 1|S, 1, 1)
        # The mask removes a masked key's score, but P @ V and dS @ K still multiply its zero
        # probability by the stored k and v (0 * NaN = NaN): masked frames are zeroed, and so are
        # the queries of a sequence without any valid key, whose q and upstream gradient are ignored.
        zero = qs.new_zeros(())
        key_ok = mask.transpose(-1, -2)  # (B, 1|S, T, 1)
        ks, vs = torch.where(key_ok, ks, zero), torch.where(key_ok, vs, zero)
        qs = torch.where(valid, qs, zero)
        # A row without any valid key would give NaN; let it attend to everything, then zero it.
        mask = mask | ~valid

    b_step = min(B, MAX_SEQUENCES_PER_CALL)
    s_step = max(1, MAX_SEQUENCES_PER_CALL // b_step)
    rows = []
    for b0 in range(0, B, b_step):
        cols = []
        for s0 in range(0, S, s_step):
            sel = (slice(b0, b0 + b_step), slice(s0, s0 + s_step))
            m = None
            if mask is not None:
                m = mask[sel[0], sel[1] if mask.shape[1] > 1 else slice(None)]
            cols.append(F.scaled_dot_product_attention(qs[sel], ks[sel], vs[sel], attn_mask=m, scale=scale))
        rows.append(cols[0] if len(cols) == 1 else torch.cat(cols, dim=1))
    o = rows[0] if len(rows) == 1 else torch.cat(rows, dim=0)  # (B, S, Tq, d)
    if valid is not None:
        o = torch.where(valid, o, o.new_zeros(()))
    return o.reshape(B, H, W, nh, Tq, d).permute(0, 4, 1, 2, 3, 5).contiguous()  # (B, Tq, H, W, heads, d)
