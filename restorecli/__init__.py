"""restorecli: image restoration with Mamba-based networks (MaIR, VAMamba)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
