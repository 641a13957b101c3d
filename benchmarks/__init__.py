"""Benchmarks of aef_kernels and the STP encoder; ``python benchmarks/stp_block.py`` is the main job."""
