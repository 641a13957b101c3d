"""The training objective (docs/model.md §6): target selection, student perturbation and the losses.

Entry point: :func:`pretraining_step`, called by ``AEF.forward`` in training mode with targets.
All perturbations are masks, so tensor shapes stay static.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional

import torch
import torch.nn.functional as F

import aef_kernels as K

from .inputs import prepare_inputs, prepare_periods
from .sources import Source
from .timecode import MS_PER_DAY

MIN_PERIOD_MS = 4 * MS_PER_DAY
MAX_PERIOD_MS = 365.25 * MS_PER_DAY
HALF_YEAR_MS = MAX_PERIOD_MS / 2
# Per-sample probability of dropping a whole source, then per-frame drop rates of strategy 0.
SOURCE_DROP = {"landsat": 0.3, "sentinel1": 0.3}
FRAME_DROP = {"landsat": 0.3, "sentinel1": 0.3, "sentinel2": 0.5}


@dataclass
class Target:
    """One decoded source's reconstruction target: one frame per sample."""

    data: torch.Tensor  # (B, L, L, C), may hold NaN where invalid
    valid: torch.Tensor  # (B, L, L, C) bool, per value
    time: torch.Tensor  # (B,) float64 epoch ms
    period: torch.Tensor  # (B, 2) float64, a period longer than 4 days containing ``time``
    metadata: Optional[torch.Tensor]  # (B, m) or None


@dataclass
class Selection:
    targets: dict[str, Target]
    teacher_masks: dict[str, torch.Tensor]  # input masks with every target frame removed


@dataclass
class Perturbation:
    masks: dict[str, torch.Tensor]  # the student's input masks
    period: torch.Tensor  # (B, 2) float64: the period shared by teacher and student for consistency
    strategy: torch.Tensor  # (B,) long in {0, 1, 2}


def _uniform(shape, generator, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, dtype=torch.float64, device=device)


def _random_period_containing(t: torch.Tensor, generator, max_ms: float = MAX_PERIOD_MS) -> torch.Tensor:
    """(B,) times -> (B, 2) periods of random length in (4 days, max_ms] with t in [start, end)."""
    u = _uniform((2,) + tuple(t.shape), generator, t.device)
    length = MIN_PERIOD_MS + 1.0 + u[0] * (max_ms - MIN_PERIOD_MS - 1.0)
    start = torch.floor(t - u[1] * length)
    return torch.stack([start, start + length], dim=-1)


def _frame_valid(mask: torch.Tensor) -> torch.Tensor:
    return mask.flatten(2).any(dim=2)  # (B, N, L, L) -> (B, N)


def _pick_frame(frame_valid: torch.Tensor, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A uniformly random valid frame per sample: (index (B,), sample has one (B,))."""
    scores = torch.where(frame_valid, _uniform(frame_valid.shape, generator, frame_valid.device), -1.0)
    return scores.argmax(dim=1), frame_valid.any(dim=1)


def select_targets(decoded: Mapping[str, tuple], input_masks: Mapping[str, torch.Tensor],
                   metadata: Mapping[str, torch.Tensor], generator: Optional[torch.Generator] = None) -> Selection:
    """For every decoded source: one random valid frame per sample and a random period (longer than
    4 days) containing it. ``decoded``: name -> (data (B, N, L, L, C), times (B, N), masks (B, N, L, L)).
    An input source's target frame is removed from the teacher's input masks (no copying)."""
    teacher_masks = dict(input_masks)
    targets = {}
    for name, (x, times, m) in decoded.items():
        B = x.shape[0]
        idx, has = _pick_frame(_frame_valid(m), generator)
        rows = torch.arange(B, device=x.device)
        tdata, tmask = x[rows, idx], m[rows, idx]  # (B, L, L, C), (B, L, L)
        valid = tmask[..., None] & torch.isfinite(tdata) & has[:, None, None, None]
        t = times[rows, idx].to(torch.float64)
        meta = metadata.get(name)
        targets[name] = Target(tdata, valid, t, _random_period_containing(t, generator),
                               None if meta is None else meta[rows, idx])
        if name in teacher_masks:
            drop = F.one_hot(idx, m.shape[1]).bool() & has[:, None]  # (B, N)
            teacher_masks[name] = teacher_masks[name] & ~drop[:, :, None, None]
    return Selection(targets, teacher_masks)


def perturb_student(masks: Mapping[str, torch.Tensor], timestamps: Mapping[str, torch.Tensor],
                    generator: Optional[torch.Generator] = None) -> Perturbation:
    """The student's input masks and the consistency period, drawn per sample.

    First whole sources are dropped (landsat, sentinel1: p = 0.3); then one of: random frame drops
    with a random period (0), dropping the latter half-year with the period = the former half (1), or
    dropping the former half-year with the period = the latter half (2). Half-years are counted from
    the sample's earliest valid input frame.
    """
    names = list(masks)
    any_mask = next(iter(masks.values()))
    B, device = any_mask.shape[0], any_mask.device
    t = {n: timestamps[n].to(torch.float64) for n in names}
    fv = {n: _frame_valid(masks[n]) for n in names}
    inf = torch.tensor(math.inf, dtype=torch.float64, device=device)
    t0 = torch.stack([torch.where(fv[n], t[n], inf).amin(dim=1) for n in names]).amin(dim=0)  # (B,)
    t1 = torch.stack([torch.where(fv[n], t[n], -inf).amax(dim=1) for n in names]).amax(dim=0)
    t0 = torch.where(torch.isfinite(t0), t0, torch.zeros_like(t0))
    t1 = torch.where(torch.isfinite(t1), t1, t0)
    split = t0 + HALF_YEAR_MS
    strategy = torch.randint(0, 3, (B,), generator=generator, device=device)

    span = (t1 - t0 + 1.0).clamp(min=MIN_PERIOD_MS + 1.0)
    u = _uniform((2, B), generator, device)
    length = MIN_PERIOD_MS + 1.0 + u[0] * (span - MIN_PERIOD_MS - 1.0)
    start = torch.floor(t0 + u[1] * (span - length).clamp_min(0.0))
    random_period = torch.stack([start, start + length], dim=-1)
    former = torch.stack([t0, split], dim=-1)
    latter = torch.stack([split, split + HALF_YEAR_MS], dim=-1)
    period = torch.where((strategy == 0)[:, None], random_period,
                         torch.where((strategy == 1)[:, None], former, latter))

    out = {}
    for n in names:
        keep = torch.ones_like(fv[n])  # (B, N)
        p_source = SOURCE_DROP.get(n, 0.0)
        if p_source:
            keep = keep & (_uniform((B, 1), generator, device) >= p_source)
        p_frame = FRAME_DROP.get(n, 0.0)
        frame_keep = _uniform(fv[n].shape, generator, device) >= p_frame
        keep = keep & torch.where((strategy == 0)[:, None], frame_keep,
                                  torch.where((strategy == 1)[:, None], t[n] < split[:, None],
                                              t[n] >= split[:, None]))
        out[n] = masks[n] & keep[:, :, None, None]
    return Perturbation(out, period, strategy)


def _regrid_mean(x: torch.Tensor, valid: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Area-average (B, L, L, C) over factor x factor cells, counting valid values only."""
    B, L, _, C = x.shape

    def cells(t):
        return t.reshape(B, L // factor, factor, L // factor, factor, C).sum(dim=(2, 4))

    xs = cells(torch.where(valid, x, x.new_zeros(())))
    n = cells(valid.to(x.dtype))
    return xs / n.clamp_min(1.0), n > 0


def _per_sample_error(pred, target, valid, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of errors and number of valid terms per sample: (B,), (B,)."""
    target = torch.where(valid, target, target.new_zeros(()))
    if kind == "ce":
        pix = valid.all(dim=-1)  # (B, H, W)
        err = -(target * pred).sum(dim=-1)  # pred holds log-probabilities
        err = torch.where(pix, err, err.new_zeros(()))
        return err.flatten(1).sum(1), pix.flatten(1).sum(1).to(err.dtype)
    err = torch.where(valid, (pred - target).abs(), pred.new_zeros(()))
    return err.flatten(1).sum(1), valid.flatten(1).sum(1).to(err.dtype)


def reconstruction_loss(pred: torch.Tensor, target: Target, source: Source) -> torch.Tensor:
    """L1 (or cross-entropy) over valid target values, with the source's re-gridding and shift options.

    pred: (B, L, L, C) values or logits. Returns a scalar (0 when no value is valid).
    """
    tdata, valid = target.data.to(pred.dtype), target.valid
    L = pred.shape[1]
    if source.loss == "ce":
        pred = pred.log_softmax(dim=-1)
        valid = valid.all(dim=-1, keepdim=True).expand_as(valid)
    factor = min(source.regrid, L)
    if factor > 1:
        if source.loss == "ce":
            probs, _ = _regrid_mean(pred.exp(), torch.ones_like(valid), factor)
            tdata, cell_valid = _regrid_mean(tdata, valid, factor)
            pred = probs.clamp_min(1e-12).log()
        else:
            pred, _ = _regrid_mean(pred, torch.ones_like(valid), factor)
            tdata, cell_valid = _regrid_mean(tdata, valid, factor)
        valid = cell_valid
    k = source.shift
    if k == 0:
        err, n = _per_sample_error(pred, tdata, valid, source.loss)
        return err.sum() / n.sum().clamp_min(1.0)
    H = pred.shape[1]
    core = pred[:, k:H - k, k:H - k]
    errs, counts = [], []
    for dy in range(-k, k + 1):
        for dx in range(-k, k + 1):
            sl = (slice(None), slice(k + dy, H - k + dy), slice(k + dx, H - k + dx))
            e, n = _per_sample_error(core, tdata[sl], valid[sl], source.loss)
            errs.append(e / n.clamp_min(1.0))
            counts.append(n)
    per_sample = torch.stack(errs).amin(dim=0)  # (B,) minimum mean error over shifts
    n = torch.stack(counts).amax(dim=0)
    has = n > 0
    return torch.where(has, per_sample, 0.0).sum() / has.sum().clamp_min(1)


def consistency_loss(mu_teacher: torch.Tensor, mu_student: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """mean(1 - mu_t . mu_s) over valid pixels; mu (B, L, L, e), valid (B, L, L) bool."""
    cos = (mu_teacher * mu_student).sum(dim=-1)
    err = torch.where(valid, 1.0 - cos, cos.new_zeros(()))
    return err.sum() / valid.sum().clamp_min(1)


def clip_loss(text: torch.Tensor, image: torch.Tensor, valid: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy over the valid samples of the batch; text, image (B, e) unit vectors."""
    t, i = text[valid], image[valid]
    if t.shape[0] == 0:
        return text.sum() * 0.0
    logits = logit_scale.exp() * t @ i.T  # (n, n)
    labels = torch.arange(t.shape[0], device=t.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def pretraining_step(model, source_data, timestamps, valid_periods, masks=None, targets=None, metadata=None,
                     text=None, generator: Optional[torch.Generator] = None) -> dict:
    """The full pretraining loss of ``model`` (an :class:`aef.models.AEF`); see ``AEF.forward``.

    Teacher and student share the weights, and their inputs are encoded in one pass of batch 2B
    (static shapes, larger GEMMs). The teacher's mu is the consistency target (no gradient through
    it in that term); the teacher is trained by reconstruction, uniformity and CLIP.
    """
    cfg = model.config
    # Inputs and targets become model values once, here; the loss compares model values.
    inputs = model.preprocess(prepare_inputs(source_data, timestamps, masks, model.input_specs,
                                             known=tuple(model.decode_specs)), model.input_specs)
    B, L = inputs.batch_size, inputs.side
    overlap = sorted(set(targets or {}) & set(inputs.names))
    if overlap:
        raise ValueError(f"targets: {', '.join(overlap)} are inputs of this batch; an input source is "
                         "reconstructed from its own frames (the target frame is masked out of the input)")
    frames = {n: source_data[n] for n in source_data if n in model.decode_specs and n not in inputs.names}
    frames.update(targets or {})
    target_inputs = (model.preprocess(prepare_inputs(frames, timestamps, masks, model.decode_specs,
                                                     known=tuple(model.input_specs)), model.decode_specs)
                     if frames else None)
    if target_inputs is not None and (target_inputs.batch_size, target_inputs.side) != (B, L):
        raise ValueError(f"targets: expected batch size {B} and patch side {L} like the inputs, got "
                         f"{target_inputs.batch_size} and {target_inputs.side}")
    decoded = {n: (inputs.data[n], inputs.timestamps[n], inputs.masks[n]) for n in inputs.names
               if n in model.decode_specs}
    if target_inputs is not None:
        decoded.update({n: (target_inputs.data[n], target_inputs.timestamps[n], target_inputs.masks[n])
                        for n in target_inputs.names})
    sel = select_targets(decoded, inputs.masks, metadata or {}, generator)
    pert = perturb_student(sel.teacher_masks, inputs.timestamps, generator)

    def both(a, b):
        return torch.cat([a, b], dim=0)

    names_in = inputs.names
    encoded = model.encode({n: both(inputs.data[n], inputs.data[n]) for n in names_in},
                           {n: both(inputs.timestamps[n], inputs.timestamps[n]) for n in names_in},
                           {n: both(sel.teacher_masks[n], pert.masks[n]) for n in names_in}, transformed=True)
    teacher, student = encoded[:B], encoded[B:]

    periods, single = prepare_periods(valid_periods, B, encoded.fused.device)
    names = list(sel.targets)
    queries = [periods] + [sel.targets[n].period[:, None] for n in names] + [pert.period[:, None]]
    if text is not None:
        text_period = _random_period_containing(0.5 * (pert.period[:, 0] + pert.period[:, 1]), generator)
        queries.append(text_period[:, None])
    mu_t = model.summarize(teacher, torch.cat(queries, dim=1))  # (B, Q + targets + 1 [+ 1], L, L, e)
    mu_s = model.summarize(student, pert.period[:, None])[:, 0]  # (B, L, L, e)
    Q = periods.shape[1]
    mu_c = mu_t[:, Q + len(names)]  # the consistency period's teacher embedding

    losses, recons, weighted = {}, {}, []
    for j, name in enumerate(names):
        spec, tgt = model.decode_specs[name], sel.targets[name]
        recons[name] = model.decode(name, model.sample(mu_t[:, Q + j], generator), tgt.time, tgt.period,
                                    tgt.metadata)  # (B, L, L, C)
        losses[f"reconstruction/{name}"] = reconstruction_loss(recons[name], tgt, spec)
        weighted.append(spec.weight * losses[f"reconstruction/{name}"])
    zero = mu_t.sum() * 0.0
    losses["reconstruction"] = torch.stack(weighted).mean() if weighted else zero
    losses["uniformity"] = K.batch_uniformity_loss(mu_c)  # on the backend AEF.forward entered
    losses["consistency"] = consistency_loss(mu_c.detach(), mu_s, teacher.pixel_valid() & student.pixel_valid())
    if text is not None:
        rows = torch.arange(B, device=mu_t.device)
        pixel = text["pixel"].to(mu_t.device)
        image = mu_t[rows, -1, pixel[:, 0], pixel[:, 1]]  # (B, e)
        scale = model.logit_scale.clamp(max=math.log(100.0))
        losses["clip"] = clip_loss(model.embed_text(text["vectors"].to(mu_t.dtype), text_period), image,
                                   text["valid"].to(mu_t.device), scale)
    else:
        losses["clip"] = zero
    w = cfg.loss_weights
    losses["total"] = sum(w[k] * losses[k] for k in ("reconstruction", "uniformity", "consistency", "clip"))
    emb = mu_t[:, :Q]
    return {
        "embeddings": emb[:, 0] if single else emb,
        "teacher_embeddings": mu_c,
        "student_embeddings": mu_s,
        "reconstructions": recons,
        "targets": sel.targets,
        "losses": losses,
    }
