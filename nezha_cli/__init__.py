"""nezha-cli: a corpus-to-model toolchain for NEZHA (arXiv 1909.00204)."""

__version__ = "0.1.0"
