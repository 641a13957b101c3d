"""The AEF model (docs/model.md §4): projectors, STP encoder, summarizer, vMF head, decoders, text adapter.

    model = AEF("small")
    emb = model.embed(source_data, timestamps, valid_periods, masks)  # (B, L, L, 64) or (B, Q, L, L, 64)
    out = model.train()(source_data, timestamps, valid_periods, masks, targets={...})
    out["losses"]["total"].backward()
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Union

import torch
import torch.nn as nn

import aef_kernels as K
from aef_kernels import dispatch as _dispatch

from . import preprocess as _pre
from . import sources as _sources
from .config import AEFConfig
from .encoder import STPEncoder
from .heads import DepthToSpaceUpsample, ImplicitDecoder, TextAdapter, VMFMeanHead, sample_vmf
from .inputs import PeriodsLike, prepare_inputs, prepare_periods
from .objective import pretraining_step
from .projectors import SourceProjectors
from .summarizer import Summarizer
from .timecode import check_epoch_ms, fraction_code, period_timecode, position_in_period, timecode

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class Encoded:
    """The encoder's output for a batch, ready to be summarised for any periods."""

    fused: torch.Tensor  # (B, T, L/2, L/2, d_p)
    frame_tc: torch.Tensor  # (B, T, tc)
    mask: torch.Tensor  # (B, T, L/2, L/2) bool, True = valid

    def __getitem__(self, index) -> "Encoded":
        """Select samples along the batch dimension."""
        return Encoded(self.fused[index], self.frame_tc[index], self.mask[index])

    def pixel_valid(self) -> torch.Tensor:
        """(B, L, L) bool: full-resolution pixels with at least one valid frame."""
        m = self.mask.any(dim=1)  # (B, L/2, L/2)
        return m.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)


def _on_kernel_backend(method):
    """Run an AEF method inside the model's :meth:`AEF.kernels` context."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self.kernels():
            return method(self, *args, **kwargs)

    return run


class AEF(nn.Module):
    """AlphaEarth Foundations.

    ``AEF(model_size="small", input_sources=None, decode_sources=None, backend="auto", **overrides)``:
    ``model_size`` is a preset name (or an :class:`AEFConfig`); ``input_sources``/``decode_sources``
    map source names to channel counts (default: sentinel2, sentinel1, landsat as inputs, every
    registered target source decoded); ``overrides`` are AEFConfig fields. ``backend`` names the
    ``aef_kernels`` backend of every kernel call; "auto" (or None) defers to ``K.use_backend`` and
    ``AEF_KERNELS_BACKEND``, a named backend is forced. It is the one switch: every entry point that
    runs kernels (encode, summarize, embed, forward, decode, embed_text) runs inside
    :meth:`kernels`, and the submodules take no backend of their own.
    """

    def __init__(self, model_size: Union[str, AEFConfig] = "small",
                 input_sources: Optional[Mapping[str, int]] = None,
                 decode_sources: Optional[Mapping[str, int]] = None,
                 backend: Optional[str] = "auto", **overrides):
        super().__init__()
        if input_sources is not None:
            overrides["input_sources"] = dict(input_sources)
        if decode_sources is not None:
            overrides["decode_sources"] = dict(decode_sources)
        if isinstance(model_size, AEFConfig):
            config = model_size.replace(**overrides)
        else:
            config = AEFConfig.from_preset(model_size, **overrides)
        _dispatch.requested_backend(backend)  # validates the name
        c = self.config = config
        self.backend = None if backend in (None, "auto") else backend
        self.input_specs = {n: _sources.spec(n, k, "input") for n, k in c.input_sources.items()}
        self.decode_specs = {n: _sources.spec(n, k, "target") for n, k in c.decode_sources.items()}
        # Checked against each source when it is used: a model may be given statistics of the
        # sources it will see only.
        self.statistics = None if c.statistics is None else _pre.Statistics.from_dict(c.statistics,
                                                                                       "AEFConfig.statistics")
        self.projectors = SourceProjectors(c)
        self.encoder = STPEncoder(c)
        self.summarizer = Summarizer(c)
        self.upsample = DepthToSpaceUpsample(c.d_p)
        self.head = VMFMeanHead(c.d_p, c.embed_dim, c.norm_eps)
        self.decoders = nn.ModuleDict({
            n: ImplicitDecoder(c.embed_dim, 1 + 2 * c.decoder_time_freqs, s.metadata_size, s.channels,
                               c.decoder_hidden)
            for n, s in self.decode_specs.items()
        })
        self.text_adapter = TextAdapter(c.text_dim, 3 * c.timecode_dim, c.text_hidden, c.embed_dim)
        # CLIP's learned temperature: ln(1 / 0.07) at the start, clamped at ln(100) where used.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    @classmethod
    def from_config(cls, config: AEFConfig, backend: Optional[str] = "auto") -> "AEF":
        return cls(config, backend=backend)

    def kernels(self):
        """The context this model's kernel calls run in: ``K.use_backend(self.backend)`` for a named
        backend; for "auto", the caller's (no context of its own)."""
        return contextlib.nullcontext() if self.backend is None else K.use_backend(self.backend)

    # Timecodes with this model's periods.
    def timecode(self, t_ms: torch.Tensor) -> torch.Tensor:
        c = self.config
        return timecode(t_ms, c.timecode_periods, c.timecode_min_days, c.timecode_max_days)

    def period_code(self, periods: torch.Tensor) -> torch.Tensor:
        c = self.config
        return period_timecode(periods, c.timecode_periods, c.timecode_min_days, c.timecode_max_days)

    def preprocess(self, inputs, specs: Mapping[str, _sources.Source]):
        """Raw values -> model values (:mod:`aef.model.preprocess`) with this model's statistics."""
        return _pre.preprocess_inputs(inputs, specs, self.statistics)

    @_on_kernel_backend
    def encode(self, source_data: Mapping[str, torch.Tensor], timestamps: Mapping[str, torch.Tensor],
               masks: Optional[Mapping[str, torch.Tensor]] = None, transformed: bool = False) -> Encoded:
        """Per source (B, N_i, L, L, C_i) raw data, (B, N_i) epoch-ms times, optional (B, N_i),
        (B, N_i, L, L) or per-band (B, N_i, L, L, C_i) masks. ``transformed``: the data are model
        values already (as :func:`aef.model.objective.pretraining_step` passes them).

        Decoded-only sources in the dicts are ignored here.
        """
        inputs = prepare_inputs(source_data, timestamps, masks, self.input_specs, known=tuple(self.decode_specs),
                                dtype=self.logit_scale.dtype)
        if not transformed:
            inputs = self.preprocess(inputs, self.input_specs)
        x_p0, times, mask = self.projectors(inputs)  # (B, T, L/2, L/2, d_p), (B, T), (B, T, L/2, L/2)
        frame_tc = self.timecode(times)  # (B, T, tc)
        return Encoded(self.encoder(x_p0, frame_tc, mask), frame_tc, mask)

    @_on_kernel_backend
    def summarize(self, encoded: Encoded, periods: torch.Tensor) -> torch.Tensor:
        """periods (B, Q, 2) epoch ms (float64/int64) -> mu (B, Q, L, L, embed_dim), unit vectors."""
        check_epoch_ms("periods", periods)
        summary = self.summarizer(encoded.fused, encoded.frame_tc, self.period_code(periods),
                                  encoded.mask)  # (B, Q, L/2, L/2, d_p)
        return self.head(self.upsample(summary))  # (B, Q, L, L, e)

    def _embeddings(self, encoded: Encoded, valid_periods: PeriodsLike) -> torch.Tensor:
        periods, single = prepare_periods(valid_periods, encoded.fused.shape[0], encoded.fused.device)
        mu = self.summarize(encoded, periods)
        return mu[:, 0] if single else mu

    @_on_kernel_backend
    def embed(self, source_data: Mapping[str, torch.Tensor], timestamps: Mapping[str, torch.Tensor],
              valid_periods: PeriodsLike, masks: Optional[Mapping[str, torch.Tensor]] = None) -> torch.Tensor:
        """float32 unit vectors mu: (B, L, L, 64) for one period per sample ((B, 2) or a list of
        (start, end)), (B, Q, L, L, 64) for (B, Q, 2) periods."""
        return self._embeddings(self.encode(source_data, timestamps, masks), valid_periods).float()

    @_on_kernel_backend
    def forward(self, source_data: Mapping[str, torch.Tensor], timestamps: Mapping[str, torch.Tensor],
                valid_periods: PeriodsLike, masks: Optional[Mapping[str, torch.Tensor]] = None,
                targets: Optional[Mapping[str, torch.Tensor]] = None,
                metadata: Optional[Mapping[str, torch.Tensor]] = None,
                text: Optional[Mapping[str, torch.Tensor]] = None,
                generator: Optional[torch.Generator] = None) -> dict:
        """{"embeddings": mu} (shapes as :meth:`embed`). In training mode with ``targets`` (a dict, may
        be empty) it runs the pretraining objective of docs/model.md §6 (see
        :func:`aef.model.objective.pretraining_step`) and adds ``teacher_embeddings``,
        ``student_embeddings``, ``reconstructions`` and ``losses`` (every term and ``total``).

        ``targets``: decoded sources' frames (B, N, L, L, C), their times and masks in ``timestamps``
        and ``masks``; decoded-only sources found in ``source_data`` are targets too, and decoded
        input sources are reconstructed from their own frames. ``metadata``: per source (B, N, m).
        ``text``: {"vectors": (B, D), "pixel": (B, 2) long, "valid": (B,) bool}.
        """
        if not (self.training and targets is not None):
            return {"embeddings": self._embeddings(self.encode(source_data, timestamps, masks), valid_periods)}
        return pretraining_step(self, source_data, timestamps, valid_periods, masks, targets, metadata, text,
                                generator)

    def sample(self, mu: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """The vMF bottleneck: z ~ vMF(mu, kappa) in training mode, mu itself in evaluation mode."""
        return sample_vmf(mu, self.config.kappa, generator) if self.training else mu

    def decode(self, source: str, z: torch.Tensor, target_time: torch.Tensor, period: torch.Tensor,
               metadata: Optional[torch.Tensor] = None, physical: bool = False) -> torch.Tensor:
        """z (B, L, L, e), target_time (B,) and period (B, 2) in epoch ms, metadata (B, m) or None ->
        (B, L, L, C) values (or logits for a categorical source), in model space (what the loss
        compares), or with ``physical`` in the source's units (the transform inverted)."""
        if source not in self.decoders:
            raise ValueError(f"decode: no decoder for {source!r} (decoded sources: {', '.join(self.decoders)})")
        check_epoch_ms("target_time", target_time)
        code = fraction_code(position_in_period(target_time, period), self.config.decoder_time_freqs)
        y = self.decoders[source](z, code, metadata)
        spec = self.decode_specs[source]
        return _pre.invert(y, spec, self.statistics) if physical and spec.loss != "ce" else y

    @_on_kernel_backend
    def embed_text(self, text: torch.Tensor, period: torch.Tensor) -> torch.Tensor:
        """Precomputed text vectors (B, text_dim) for periods (B, 2) -> (B, e) unit vectors."""
        return self.text_adapter(text, self.period_code(period))

    def save_pretrained(self, directory: Union[str, os.PathLike]) -> None:
        """Weights as safetensors and the config as JSON, side by side in ``directory``."""
        from safetensors.torch import save_file

        from .weights import WEIGHTS_HASH_KEY, weights_digest

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(d / WEIGHTS_FILE))
        config = {**self.config.to_dict(), WEIGHTS_HASH_KEY: weights_digest(state)}
        (d / CONFIG_FILE).write_text(json.dumps(config, indent=2))

    @classmethod
    def from_pretrained(cls, directory: Union[str, os.PathLike], backend: Optional[str] = "auto",
                        verify_weights: bool = True) -> "AEF":
        """The model of a ``save_pretrained`` folder; its weights must match the sha256 digest stored in
        the config (:class:`aef.model.weights.CheckpointError` otherwise) unless ``verify_weights`` is False."""
        from safetensors.torch import load_file

        from .weights import WEIGHTS_HASH_KEY, CheckpointError, weights_digest

        d = Path(directory)
        stored = json.loads((d / CONFIG_FILE).read_text())
        expected = stored.pop(WEIGHTS_HASH_KEY, None) if isinstance(stored, dict) else None
        config = AEFConfig.from_dict(stored)
        state = load_file(str(d / WEIGHTS_FILE))
        if verify_weights and expected is not None and weights_digest(state) != expected:
            raise CheckpointError(f"{d / WEIGHTS_FILE}: the weights do not match the sha256 digest stored in "
                                  f"{CONFIG_FILE}; the file is damaged or was replaced (for weights edited on "
                                  "purpose, load with verify_weights=False, aef: --no-verify-weights)")
        model = cls.from_config(config, backend=backend)
        model.load_state_dict(state)
        return model
