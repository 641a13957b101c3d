"""aef.pipelines.schedule: Adam with linear warm-up over 1% of the steps, then linear decay to 0."""

import pytest
import torch

from aef.pipelines.schedule import build_optimizer, lr_factor


@pytest.mark.parametrize("total", [100, 1000, 100_000])
def test_warmup_then_linear_decay(total):
    """0 at step 0, the peak at 1% of the steps, half-way down in the middle of the decay, 0 at the end."""
    warm = max(1, round(0.01 * total))
    assert lr_factor(0, total) == 0
    assert lr_factor(warm, total) == pytest.approx(1.0)
    assert lr_factor(warm // 2, total) == pytest.approx((warm // 2) / warm)
    assert lr_factor((warm + total) // 2, total) == pytest.approx(0.5, abs=2 / total)
    assert lr_factor(total, total) == 0


def test_optimizer_follows_the_schedule():
    """build_optimizer returns Adam whose learning rate follows peak * lr_factor."""
    p = torch.nn.Parameter(torch.zeros(3))
    opt, sched = build_optimizer([p], total_steps=200, lr=1e-4)
    assert isinstance(opt, torch.optim.Adam)
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        p.sum().backward()
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.0, 0.5e-4, 1e-4, 1e-4 * 197 / 198, 1e-4 * 196 / 198])
