"""Quantizers: float weights (N out, K in) -> the stored formats of docs/quant.md, whose exact
dequantization is leedl_fast/reference/quant.py.

    quantize_int8(w)                  per output channel, symmetric: scale = max|w_n| / 127
    quantize_int4(w, group_size)      per (row, group of group_size inputs), asymmetric:
                                      scale = (max - min) / 15, zero = round(-min / scale)
    quantize_codebook(w, bits)        the book's weight clustering (§17.3): 1-D k-means of the
                                      layer's weights into 2^bits clusters, each weight stores
                                      its cluster's index, the table stores the clusters' means

All are computed in float32 (float64 for float64 weights) on the weight's device.
"""
import torch

from ..reference import quant as reference


def _acc(w):
    return w.to(torch.float64 if w.dtype == torch.float64 else torch.float32)


def _check_weight(w, name="weight"):
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"leedl_fast.quant: {name} must be a 2-D floating point tensor "
                         f"(out_features, in_features), got "
                         f"{getattr(w, 'dtype', type(w).__name__)} {tuple(getattr(w, 'shape', ()))}")
    if not torch.isfinite(w).all():
        raise ValueError(f"leedl_fast.quant: {name} has non-finite values")


def quantize_int8(w):
    """-> (qweight int8 (N, K), scales float32 (N,)). A row of zeros gets scale 0."""
    _check_weight(w)
    wa = _acc(w)
    scales = wa.abs().amax(dim=1) / 127
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = torch.clamp(torch.round(wa / safe[:, None]), -127, 127).to(torch.int8)
    return q, scales.float()


def quantize_int4(w, group_size=128):
    """-> (packed uint8 (N, K / 2), scales float32 (N, K / group_size), zeros float32 (same)).
    Each group's [min, max] (widened to include 0, so zeros stay exact) maps onto [0, 15]."""
    _check_weight(w)
    n, k = w.shape
    if group_size < 2 or group_size % 2:
        raise ValueError(f"leedl_fast.quant: group_size must be an even number >= 2, got "
                         f"{group_size}")
    if k % group_size:
        raise ValueError(f"leedl_fast.quant: in_features ({k}) must be a multiple of "
                         f"group_size ({group_size}) for int4 weight-only quantization")
    g = _acc(w).reshape(n, k // group_size, group_size)
    lo = torch.clamp(g.amin(dim=-1), max=0)
    hi = torch.clamp(g.amax(dim=-1), min=0)
    scales = (hi - lo) / 15
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    zeros = torch.clamp(torch.round(-lo / safe), 0, 15)
    q = torch.clamp(torch.round(g / safe[..., None]) + zeros[..., None], 0, 15)
    packed = reference.pack_int4(q.reshape(n, k).long())
    return packed, scales.float(), zeros.float()


def kmeans_1d(values, clusters, iters=25):
    """Lloyd's algorithm on scalars: centroids start at evenly spaced quantiles; returns
    (sorted centroids (clusters,), index of each value's nearest centroid)."""
    v = values.reshape(-1)
    qs = (torch.arange(clusters, dtype=v.dtype, device=v.device) + 0.5) / clusters
    sample = v if v.numel() <= 1 << 20 else v[torch.randperm(v.numel(), device=v.device)[:1 << 20]]
    centroids = torch.quantile(sample, qs)
    for _ in range(iters):
        bounds = (centroids[1:] + centroids[:-1]) / 2  # sorted centroids: nearest = bucket
        idx = torch.bucketize(v, bounds)
        sums = torch.zeros_like(centroids).index_add_(0, idx, v)
        counts = torch.zeros_like(centroids).index_add_(0, idx, torch.ones_like(v))
        new = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        new, _ = torch.sort(new)
        if torch.equal(new, centroids):
            break
        centroids = new
    idx = torch.bucketize(v, (centroids[1:] + centroids[:-1]) / 2)
    # The table holds each cluster's mean (the book's definition), exact for the final
    # assignment even where Lloyd's iterations stopped before a fixed point.
    sums = torch.zeros_like(centroids).index_add_(0, idx, v)
    counts = torch.zeros_like(centroids).index_add_(0, idx, torch.ones_like(v))
    centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
    return centroids, idx.reshape(values.shape)


def quantize_codebook(w, bits=2, iters=25):
    """-> (packed uint8 (N, ceil(K * bits / 8)), table float32 (2^bits,)): each weight's
    cluster index and each cluster's mean (§17.3; bits = 2 is the book's 4 clusters)."""
    _check_weight(w)
    if bits not in (1, 2, 3, 4):
        raise ValueError(f"leedl_fast.quant: codebook bits must be 1, 2, 3 or 4, got {bits}")
    table, idx = kmeans_1d(_acc(w), 1 << bits, iters)
    return reference.pack_bits(idx, bits), table.float()
