"""aef.models.AEF: the properties required of the model (issue 3, item 3) and its public API."""

import pytest
import torch

import aef_kernels as K
from aef import AEF
from aef.pipelines.data.synthetic import DEFAULT_START_MS, YEAR_MS

from model_fixtures import INPUT_FRAMES, YEAR, inputs_of, year_periods


def _embed(model, data, times, masks, periods=None):
    B = next(iter(data.values())).shape[0]
    return model.embed(data, times, year_periods(B) if periods is None else periods, masks)


def _close(a, b, rtol=1e-5):
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol)


def test_frame_and_source_order_invariance(tiny_model, make_batch):
    """Any permutation of frames (with their timestamps and masks), and any order of the source
    dict, gives the same embeddings within 1e-5."""
    data, times, masks = inputs_of(make_batch(side=16))
    ref = _embed(tiny_model, data, times, masks)
    g = torch.Generator().manual_seed(3)
    pd, pt, pm = {}, {}, {}
    for name in reversed(list(data)):
        perm = torch.randperm(data[name].shape[1], generator=g)
        pd[name], pt[name], pm[name] = data[name][:, perm], times[name][:, perm], masks[name][:, perm]
    _close(_embed(tiny_model, pd, pt, pm), ref)


@pytest.mark.parametrize("poison", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("source,mask_form", [("sentinel2", "pixel"), ("sentinel1", "frame")])
def test_masked_frames_equal_removed_frames(tiny_model, make_batch, poison, source, mask_form):
    """Extra frames masked out (by a (B, N, L, L) pixel mask or a (B, N) frame mask), holding NaN or
    +-inf data and absurd times, give exactly the embeddings of the batch without them."""
    data, times, masks = inputs_of(make_batch(side=16))
    ref = _embed(tiny_model, data, times, masks)
    x, B, L = data[source], 2, 16
    d, t, m = dict(data), dict(times), dict(masks)
    d[source] = torch.cat([torch.full((B, 2, L, L, x.shape[-1]), poison), x], dim=1)
    t[source] = torch.cat([torch.full((B, 2), -(2 ** 62)), times[source]], dim=1)
    if mask_form == "pixel":
        m[source] = torch.cat([torch.zeros(B, 2, L, L, dtype=torch.bool), masks[source]], dim=1)
    else:
        assert masks[source].all()  # the frame form can only express whole valid frames
        m[source] = torch.cat([torch.zeros(B, 2, dtype=torch.bool), torch.ones(B, x.shape[1], dtype=torch.bool)], 1)
    _close(_embed(tiny_model, d, t, m), ref)


@pytest.mark.parametrize("poison", [float("nan"), float("inf"), -float("inf")])
def test_masked_pixels_have_no_influence(tiny_model, make_batch, poison):
    """Whatever masked pixels hold (NaN, +-inf), the embeddings equal those with zeros there."""
    data, times, masks = inputs_of(make_batch(side=16))
    zeroed = {n: torch.where(masks[n][..., None], x, 0.0) for n, x in data.items()}
    poisoned = {n: torch.where(masks[n][..., None], x, poison) for n, x in data.items()}
    assert any((~m).any() for m in masks.values())
    _close(_embed(tiny_model, poisoned, times, masks), _embed(tiny_model, zeroed, times, masks), rtol=0)


def test_samples_are_independent_in_eval_mode(tiny_model, make_batch):
    """Each sample's embeddings in a batch equal those of the sample embedded alone."""
    data, times, masks = inputs_of(make_batch(side=16, batch=3))
    ref = _embed(tiny_model, data, times, masks)
    for b in range(3):
        one = [{n: v[b:b + 1] for n, v in d.items()} for d in (data, times, masks)]
        _close(_embed(tiny_model, *one), ref[b:b + 1])


@pytest.mark.parametrize("L", [16, 32, 48, 64, 128])
def test_unit_norm_and_full_resolution(tiny_model, make_batch, L):
    """Embeddings are float32 unit vectors of shape (B, L, L, 64) for every L (frame counts and
    timestamps differ per source); Q periods give (B, Q, L, L, 64)."""
    frames = {"sentinel2": 3, "sentinel1": 1} if L == 128 else {"sentinel2": 3, "landsat": 1, "sentinel1": 2}
    data, times, masks = inputs_of(make_batch(side=L, frames=frames, batch=1 if L == 128 else 2))
    B = data["sentinel2"].shape[0]
    emb = _embed(tiny_model, data, times, masks)
    assert emb.shape == (B, L, L, 64) and emb.dtype == torch.float32
    _close(emb.norm(dim=-1), torch.ones(B, L, L))
    if L == 16:
        q = _embed(tiny_model, data, times, masks, torch.stack([year_periods(B)] * 3, dim=1))
        assert q.shape == (B, 3, L, L, 64)
        _close(q[:, 1], emb)


def test_periods_change_embeddings_even_outside_the_support(tiny_model, make_batch):
    """Different summary periods give different embeddings, including periods years after the data."""
    data, times, masks = inputs_of(make_batch(side=16))
    day = 86_400_000
    periods = torch.tensor([[YEAR[0], YEAR[0] + 30 * day], [YEAR[0] + 180 * day, YEAR[1]], list(YEAR),
                            [DEFAULT_START_MS + 7 * YEAR_MS, DEFAULT_START_MS + 8 * YEAR_MS]])
    emb = _embed(tiny_model, data, times, masks, periods[None].expand(2, 4, 2))
    for i in range(4):
        for j in range(i):
            assert (emb[:, i] - emb[:, j]).norm(dim=-1).mean() > 1e-3


def test_conventions_and_output_dict(tiny_model, make_batch):
    """forward returns {"embeddings"} equal to embed(); a list of (start, end) tuples works."""
    data, times, masks = inputs_of(make_batch(side=16))
    out = tiny_model(data, times, [YEAR, YEAR], masks)
    assert set(out) == {"embeddings"}
    _close(out["embeddings"], _embed(tiny_model, data, times, masks))


def _training_batch(make_batch):
    return make_batch(side=16, frames=dict(INPUT_FRAMES, glo30=1, era5=2, nlcd=1, grace=1, gedi=1, palsar2=1),
                      text_dim=768)


def test_every_parameter_receives_a_gradient(make_batch):
    """In training mode with targets, forward returns every loss term and total, and every
    parameter gets a finite, non-zero gradient from the total."""
    torch.manual_seed(0)
    model = AEF("tiny").train()
    batch = _training_batch(make_batch)
    out = model(**batch, valid_periods=year_periods(2), targets={}, generator=torch.Generator().manual_seed(0))
    assert {"embeddings", "teacher_embeddings", "student_embeddings", "reconstructions", "losses"} <= set(out)
    assert {"reconstruction", "uniformity", "consistency", "clip", "total"} <= set(out["losses"])
    assert set(out["reconstructions"]) == set(model.decode_specs)
    out["losses"]["total"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_custom_sources_and_from_config():
    """input_sources/decode_sources map names to channel counts (custom names allowed);
    from_config builds the same architecture."""
    model = AEF("tiny", input_sources={"sentinel2": 5, "drone": 3}, decode_sources={"drone": 3})
    assert set(model.projectors.proj) == {"sentinel2", "drone"} and set(model.decoders) == {"drone"}
    L = 16
    data = {"drone": torch.randn(1, 2, L, L, 3)}
    times = {"drone": torch.tensor([[YEAR[0], YEAR[0] + 10]])}
    assert model.eval().embed(data, times, [YEAR]).shape == (1, L, L, 64)
    same = AEF.from_config(model.config)
    assert [n for n, _ in same.named_parameters()] == [n for n, _ in model.named_parameters()]


def test_save_and_load_pretrained(tiny_model, make_batch, tmp_path):
    """save_pretrained writes safetensors + JSON config; from_pretrained restores identical embeddings."""
    tiny_model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    loaded = AEF.from_pretrained(tmp_path).eval()
    assert loaded.config == tiny_model.config
    data, times, masks = inputs_of(make_batch(side=16))
    _close(_embed(loaded, data, times, masks), _embed(tiny_model, data, times, masks), rtol=0)


def _bad(kind):
    L = 16
    data = {"sentinel2": torch.randn(2, 2, L, L, 5)}
    times = {"sentinel2": torch.full((2, 2), YEAR[0])}
    periods = year_periods(2)
    if kind == "bands":
        data["sentinel2"] = torch.randn(2, 2, L, L, 6)
    elif kind == "side":
        data["sentinel2"] = torch.randn(2, 2, 24, 24, 5)
    elif kind == "float32":
        times["sentinel2"] = times["sentinel2"].float()
    elif kind == "period":
        periods = periods.flip(-1)
    elif kind == "unknown":
        data["modis"], times["modis"] = data["sentinel2"], times["sentinel2"]
    elif kind == "batch":
        data["landsat"], times["landsat"] = torch.randn(3, 1, L, L, 7), torch.full((3, 1), YEAR[0])
    return data, times, periods


@pytest.mark.parametrize("kind,error,match", [
    ("bands", ValueError, r"sentinel2.*\(B, N, L, L, 5\)"),
    ("side", ValueError, "multiple of 16"),
    ("float32", TypeError, "float32"),
    ("period", ValueError, "start < end"),
    ("unknown", ValueError, "unknown source 'modis'"),
    ("batch", ValueError, "B = 2"),
])
def test_clear_errors(tiny_model, kind, error, match):
    """Bad input to AEF.embed raises an error that names the problem."""
    data, times, periods = _bad(kind)
    with pytest.raises(error, match=match):
        tiny_model.embed(data, times, periods)


def _other_backends():
    return [b for b in K.dispatch.BACKENDS if b != "reference"]


@pytest.mark.parametrize("backend", _other_backends())
def test_backends_match_the_reference(make_batch, backend):
    """Every backend that can run here gives the reference's embeddings and gradients (float32)."""
    torch.manual_seed(0)
    model = AEF("tiny", blocks=1).train()
    # Small: the Triton interpreter runs every kernel program in Python on CPU-only machines.
    data, times, masks = inputs_of(make_batch(side=16, frames={"sentinel2": 2, "sentinel1": 1}, batch=1))

    def run(name):
        model.zero_grad()
        with K.use_backend(name):
            emb = model.encode(data, times, masks)
            mu = model.summarize(emb, year_periods(1)[:, None].double())
        (mu * torch.linspace(-1, 1, 64)).sum().backward()
        return mu.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ref_mu, ref_grads = run("reference")
    try:
        mu, grads = run(backend)
    except K.BackendUnavailableError as e:
        pytest.skip(f"{backend} cannot run the model here: {str(e).splitlines()[0]}")
    torch.testing.assert_close(mu, ref_mu, rtol=1e-4, atol=1e-4)
    assert grads.keys() == ref_grads.keys()
    for n in grads:
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-3, atol=1e-4, msg=n)
