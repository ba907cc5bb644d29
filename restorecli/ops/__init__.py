"""Numerical kernels of the models: the selective scan and its backends.

``selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, backend=None)``
is the only scan entry point models use; ``available_backends()`` and
``resolve_backend(backend, device)`` report and choose backends (see ``selective_scan``).
"""

from __future__ import annotations

from restorecli.ops.selective_scan import BACKENDS, available_backends, resolve_backend, selective_scan

__all__ = ["BACKENDS", "available_backends", "resolve_backend", "selective_scan"]
