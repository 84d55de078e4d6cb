"""Selective-scan operators: reference, fused CPU kernel, CUDA dispatch."""

from drdemo.ops.scan import (
    cross_scan_orders,
    default_backend,
    relative_error,
    scan_backend,
    selective_scan,
    selective_scan_2d,
    selective_scan_ref,
)

__all__ = [
    "cross_scan_orders", "default_backend", "relative_error", "scan_backend", "selective_scan", "selective_scan_2d",
    "selective_scan_ref",
]
