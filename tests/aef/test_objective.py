"""aef.model.objective: target selection, student perturbation and loss terms (docs/model.md §6)."""

import math

import pytest
import torch

from aef import AEF
from aef.model.objective import (HALF_YEAR_MS, MIN_PERIOD_MS, Target, clip_loss, consistency_loss, perturb_student,
                           reconstruction_loss, select_targets)
from aef.model.sources import Source, get

from model_fixtures import INPUT_FRAMES, inputs_of, year_periods

DAY = 86_400_000


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_targets_are_valid_frames_inside_their_period_and_removed_from_the_input(make_batch):
    """Each sample's target frame is a valid frame, its period is longer than 4 days and contains
    it, and the teacher no longer sees that frame of an input source (a target-only source leaves
    the input masks alone)."""
    batch = make_batch(side=16, frames=dict(INPUT_FRAMES, glo30=1), batch=4)
    data, times, masks = inputs_of(batch)
    decoded = {n: (batch["source_data"][n], batch["timestamps"][n], batch["masks"][n]) for n in ("sentinel2", "glo30")}
    sel = select_targets(decoded, masks, {}, _gen())
    for name in decoded:
        tgt = sel.targets[name]
        length = tgt.period[:, 1] - tgt.period[:, 0]
        assert (length > MIN_PERIOD_MS).all()
        assert ((tgt.period[:, 0] <= tgt.time) & (tgt.time < tgt.period[:, 1])).all()
        assert tgt.valid.shape == tgt.data.shape and tgt.valid.any()
        assert torch.isfinite(tgt.data[tgt.valid]).all()
    removed = masks["sentinel2"].flatten(2).any(2) & ~sel.teacher_masks["sentinel2"].flatten(2).any(2)
    assert (removed.sum(1) == 1).all()
    b, n = removed.nonzero().unbind(1)
    assert torch.equal(batch["timestamps"]["sentinel2"][b, n].double(), sel.targets["sentinel2"].time)
    for name in ("landsat", "sentinel1"):
        assert torch.equal(sel.teacher_masks[name], masks[name])


def test_student_strategies():
    """Student masks are subsets of the teacher's; strategy 1 keeps only the former half-year and
    uses it as the period, strategy 2 the latter; sentinel2 is never dropped as a whole source."""
    B, N, L = 64, 12, 2
    t0 = 1_700_000_000_000
    times = {n: t0 + torch.linspace(0, 360 * DAY, N).long().expand(B, N) for n in ("sentinel2", "landsat")}
    masks = {n: torch.ones(B, N, L, L, dtype=torch.bool) for n in times}
    p = perturb_student(masks, times, _gen(1))
    split = t0 + HALF_YEAR_MS
    for n in times:
        kept = p.masks[n].flatten(2).any(2)
        assert (p.masks[n] <= masks[n]).all()
        late = times[n] >= split
        assert not (kept & late)[p.strategy == 1].any() and not (kept & ~late)[p.strategy == 2].any()
    assert (p.period[p.strategy == 1] == torch.tensor([t0, split], dtype=torch.float64)).all()
    assert (p.period[p.strategy == 2, 0] == split).all()
    assert ((p.period[:, 1] - p.period[:, 0]) > MIN_PERIOD_MS).all()
    s2_kept = p.masks["sentinel2"].flatten(2).any(2)
    assert s2_kept[p.strategy == 1].any(1).all()  # never dropped whole: the former half survives
    assert 0.2 < s2_kept[p.strategy == 0].float().mean() < 0.8  # ~50% frame drops
    assert set(p.strategy.tolist()) == {0, 1, 2}


def _target(data, valid):
    B = data.shape[0]
    return Target(data, valid, torch.zeros(B, dtype=torch.float64), torch.tensor([[0.0, 1e9]] * B), None)


def test_l1_averages_over_valid_values_only():
    """Invalid target values (NaN) are ignored; the loss is the mean |error| over valid values."""
    pred = torch.zeros(2, 4, 4, 3)
    data = torch.ones(2, 4, 4, 3)
    valid = torch.rand(2, 4, 4, 3) > 0.5
    data = torch.where(valid, data * 2, float("nan"))
    loss = reconstruction_loss(pred, _target(data, valid), get("sentinel2"))
    assert loss.item() == pytest.approx(2.0)


def test_cross_entropy_of_the_right_class_is_small():
    """For a categorical source, confident correct logits give ~0 loss, wrong ones a large loss."""
    classes = torch.randint(0, 16, (2, 4, 4))
    onehot = torch.nn.functional.one_hot(classes, 16).float()
    valid = torch.ones_like(onehot, dtype=torch.bool)
    nlcd = get("nlcd")
    assert reconstruction_loss(20 * onehot, _target(onehot, valid), nlcd) < 1e-6
    assert reconstruction_loss(-20 * onehot, _target(onehot, valid), nlcd) > 10


def test_regridded_loss_compares_area_averages():
    """With regrid = f, errors that cancel within each f x f cell give zero loss (not without it)."""
    pred = torch.zeros(1, 4, 4, 1)
    data = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(2, 2)[None, :, :, None]
    valid = torch.ones_like(data, dtype=torch.bool)
    src = Source("x", ("a",), False, True)
    assert reconstruction_loss(pred, _target(data, valid), src).item() == pytest.approx(1.0)
    assert reconstruction_loss(pred, _target(data, valid), Source("x", ("a",), False, True, regrid=2)) == 0
    # GRACE's 128-pixel cell is clamped to the patch: one average per sample.
    assert reconstruction_loss(pred, _target(data, valid), get("grace")) == 0


def test_shift_invariant_loss_forgives_small_shifts():
    """A prediction shifted by one pixel has zero shift-invariant loss (k = 1) but not plain loss."""
    img = torch.randn(1, 10, 10, 2)
    shifted = torch.roll(img, shifts=(1, -1), dims=(1, 2))
    valid = torch.ones_like(img, dtype=torch.bool)
    plain = Source("x", ("a", "b"), False, True)
    shifty = Source("x", ("a", "b"), False, True, shift=1)
    assert reconstruction_loss(shifted, _target(img, valid), plain) > 0.1
    assert reconstruction_loss(shifted, _target(img, valid), shifty) < 1e-6


def test_consistency_and_clip():
    """Consistency is mean(1 - cos) over valid pixels only (no factor 0.5); CLIP is ~0 for matched
    pairs with a large scale and ln(n) for a zero scale."""
    mu = torch.nn.functional.normalize(torch.randn(2, 3, 3, 8), dim=-1)
    valid = torch.zeros(2, 3, 3, dtype=torch.bool)
    valid[0, 0, 0] = True
    student = torch.where(valid[..., None], mu, -mu)  # differs only where invalid
    assert consistency_loss(mu, student, valid).item() == pytest.approx(0.0, abs=1e-6)
    assert consistency_loss(mu, -mu, valid).item() == pytest.approx(2.0)
    u = torch.eye(4)
    ok = torch.ones(4, dtype=torch.bool)
    assert clip_loss(u, u, ok, torch.tensor(math.log(100.0))) < 1e-6
    assert clip_loss(u, u, ok, torch.tensor(-30.0)).item() == pytest.approx(math.log(4), rel=1e-4)


def test_loss_weights_and_determinism(make_batch):
    """The total is the configured weighted sum of the terms, and a seeded generator reproduces it."""
    weights = {"reconstruction": 2.0, "uniformity": 0.5, "consistency": 0.25, "clip": 0.125}
    torch.manual_seed(0)
    model = AEF("tiny", blocks=1, loss_weights=weights).train()
    batch = make_batch(side=16, frames=dict(INPUT_FRAMES, glo30=1), text_dim=768)

    def run():
        return model(**batch, valid_periods=year_periods(2), targets={}, generator=_gen(5))["losses"]

    torch.manual_seed(1)
    a = run()
    torch.manual_seed(1)
    b = run()
    assert torch.equal(a["total"], b["total"])
    expected = sum(w * a[k] for k, w in weights.items())
    torch.testing.assert_close(a["total"], expected)
    assert all(torch.isfinite(v) for v in a.values())


def test_explicit_targets_for_a_custom_model():
    """targets= carries decoded-only frames (times and masks in the shared dicts) for a model with
    custom sources; giving an input source as a target is refused."""
    torch.manual_seed(0)
    model = AEF("tiny", blocks=1, input_sources={"sentinel2": 5}, decode_sources={"sentinel2": 5, "dem": 2}).train()
    L, B = 16, 2
    t0 = 1_700_000_000_000
    data = {"sentinel2": torch.randn(B, 2, L, L, 5)}
    times = {"sentinel2": torch.tensor([[t0, t0 + 30 * DAY]] * B), "dem": torch.full((B, 1), t0)}
    periods = torch.tensor([[t0, t0 + 365 * DAY]] * B)
    out = model(data, times, periods, targets={"dem": torch.randn(B, 1, L, L, 2)}, generator=_gen())
    assert set(out["reconstructions"]) == {"sentinel2", "dem"} and out["reconstructions"]["dem"].shape == (B, L, L, 2)
    assert torch.isfinite(out["losses"]["total"])
    with pytest.raises(ValueError, match="targets: sentinel2"):
        model(data, times, periods, targets={"sentinel2": data["sentinel2"]}, generator=_gen())
