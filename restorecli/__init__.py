"""restorecli: image restoration with Mamba-based networks (MaIR, VAMamba).

Load a network by name or checkpoint file, and run it::

    >>> import restorecli
    >>> model = restorecli.load_model("restorecli-light-x4", device="cpu")
    >>> model.task, model.scale, model.weights.source
    ('sr', 4, 'bundled')

The API is imported on first use, so that importing the package (and ``restore --help``) does
not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from restorecli._version import __version__

__all__ = ["LoadedModel", "__version__", "load_model"]

if TYPE_CHECKING:
    from restorecli.loading import load_model
    from restorecli.models.descriptor import LoadedModel


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from restorecli.loading import load_model

        return load_model
    if name == "LoadedModel":
        from restorecli.models.descriptor import LoadedModel

        return LoadedModel
    raise AttributeError(f"module 'restorecli' has no attribute {name!r}")
