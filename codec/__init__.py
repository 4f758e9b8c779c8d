"""codec-lab: residual-VQ audio codec experiments with failure diagnostics."""

__version__ = "0.1.0"
