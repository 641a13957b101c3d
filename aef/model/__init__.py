"""The AEF model (docs/model.md): configuration and presets, sources and their preprocessing, input
conventions and timecodes, the projectors, the STP encoder, the summarizer, the heads, the layers
they share, the training objective, and :class:`aef.model.aef.AEF` that puts them together.
Nothing here reads files or parses command lines; that is :mod:`aef.pipelines`."""
