"""Convolution and pooling over images (N, C, H, W), as ``torch.nn.Conv2d`` / ``MaxPool2d`` / ``AvgPool2d``.

Shapes: N samples, C input channels, F filters, H x W input, KH x KW kernel,
s stride, p zero padding, Hp = H + 2p, Wp = W + 2p, and OH x OW output with
OH = (Hp - KH) // s + 1 (floor, as torch: rows and columns no window covers
are dropped; their gradient is zero).

The convolution is im2col + one matrix product per sample chunk (two in
backward: dw, and the column gradients that col2im folds back into dx). The
columns are laid out channel-major, (C*KH*KW, N*OH*OW), so that every product
writes an output whose long axis is N*OH*OW (up to 20% faster in OpenBLAS
than the transposed orientation). im2col and col2im loop over the KH*KW kernel
offsets, never over pixels, in two stages so that most copies move runs of
OH*OW contiguous values instead of OW: im2col copies the KW column shifts of
the image once, then cuts every row shift out of them; col2im sums the KH row
shifts of one column shift in a small buffer before adding it into the image.
Each is ~40% faster so than with one strided copy per offset (measured on a
cache-resident chunk).

Samples go through in chunks whose column block stays below ``COLUMN_BYTES``,
and backward rebuilds each chunk's columns from the cached input rather than
keeping them from forward: the block then stays in cache between im2col and
the products, no block passes glibc's 32 MiB mmap threshold (larger arrays
are freshly mapped, and page-faulted, on every call), and the cache holds x,
not columns KH*KW times its size. At batch 64 of a 32->64 channel 5x5 conv on
14x14 this is ~25% faster than one block of columns kept from forward, and
no slower at batch 10, where everything fits in cache anyway.

The products dominate: at one thread they run at numpy's OpenBLAS speed, which
on CPUs with AVX-512 is about half of what PyTorch's oneDNN convolution reaches
when OpenBLAS picks its AVX2 kernels (as it does on AMD Zen 5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clients.numpy_engine.core import Module, ParamShapes

COLUMN_BYTES = 4 * 2**20  # the largest column block of one sample chunk


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def output_size(size: int, kernel: int, stride: int, padding: int = 0) -> int:
    """Windows along one axis: floor((size + 2 padding - kernel) / stride) + 1."""
    out = (size + 2 * padding - kernel) // stride + 1
    if out < 1:
        raise ValueError(f"kernel {kernel} does not fit an axis of {size} with padding {padding}")
    return out


def _span(offset: int, count: int, stride: int) -> slice:
    """The ``count`` positions offset, offset + stride, ... of one kernel offset's windows."""
    return slice(offset, offset + stride * (count - 1) + 1, stride)


def im2col(xp: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int]) -> np.ndarray:
    """Columns of a padded, channel-major image.

    xp: (C, N, Hp, Wp). Returns cols: (C*KH*KW, N*OH*OW) with
    cols[(c, i, j), (n, oh, ow)] = xp[c, n, oh*sh + i, ow*sw + j].
    """
    (kh, kw), (sh, sw) = kernel, stride
    c, n, hp, wp = xp.shape
    oh, ow = output_size(hp, kh, sh), output_size(wp, kw, sw)
    cols = np.empty((c, kh, kw, n, oh, ow), dtype=xp.dtype)
    for j in range(kw):
        shifted = np.ascontiguousarray(xp[:, :, :, _span(j, ow, sw)])  # (C, N, Hp, OW)
        for i in range(kh):
            cols[:, i, j] = shifted[:, :, _span(i, oh, sh)]
    return cols.reshape(c * kh * kw, n * oh * ow)


def col2im(
    dcols: np.ndarray,
    padded_shape: tuple[int, int, int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
) -> np.ndarray:
    """The adjoint of ``im2col``: adds every column entry back to the pixel it came from.

    dcols: (C*KH*KW, N*OH*OW); padded_shape: (C, N, Hp, Wp). Returns dxp: (C, N, Hp, Wp).
    """
    (kh, kw), (sh, sw) = kernel, stride
    c, n, hp, wp = padded_shape
    oh, ow = output_size(hp, kh, sh), output_size(wp, kw, sw)
    d6 = dcols.reshape(c, kh, kw, n, oh, ow)
    dxp = np.zeros(padded_shape, dtype=dcols.dtype)
    shifted = np.empty((c, n, hp, ow), dtype=dcols.dtype)
    for j in range(kw):
        shifted.fill(0)
        for i in range(kh):
            shifted[:, :, _span(i, oh, sh)] += d6[:, i, j]
        dxp[:, :, :, _span(j, ow, sw)] += shifted
    return dxp


def _pad_channel_major(x: np.ndarray, padding: tuple[int, int]) -> np.ndarray:
    """x: (N, C, H, W) -> xp: (C, N, H + 2ph, W + 2pw), zero borders."""
    ph, pw = padding
    n, c, h, w = x.shape
    xp = np.zeros((c, n, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
    xp[:, :, ph : ph + h, pw : pw + w] = x.transpose(1, 0, 2, 3)
    return xp


def _chunks(x_shape: tuple[int, ...], w_shape: tuple[int, ...], out_hw: tuple[int, int], itemsize: int):
    """Sample ranges [a, b) whose column blocks stay below COLUMN_BYTES (at least one sample each)."""
    n = x_shape[0]
    per_sample = int(np.prod(w_shape[1:])) * out_hw[0] * out_hw[1] * itemsize
    step = max(1, COLUMN_BYTES // per_sample)
    return [(a, min(a + step, n)) for a in range(0, n, step)]


@dataclass
class Conv2dCache:
    """What ``conv2d_backward`` needs from a forward pass."""

    x: np.ndarray  # (N, C, H, W): the input, whose columns backward rebuilds chunk by chunk


def conv2d_forward(
    x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: tuple[int, int], padding: tuple[int, int]
) -> tuple[np.ndarray, Conv2dCache]:
    """Cross-correlation, as ``torch.nn.functional.conv2d``.

    x: (N, C, H, W); w: (F, C, KH, KW); b: (F,). Returns y: (N, F, OH, OW) and the cache.
    """
    n, c, h, wd = x.shape
    f, c_w, kh, kw = w.shape
    if c != c_w:
        raise ValueError(f"input has {c} channels, the kernel expects {c_w}")
    oh, ow = output_size(h, kh, stride[0], padding[0]), output_size(wd, kw, stride[1], padding[1])
    wm = w.reshape(f, -1)  # (F, C*KH*KW)
    y = np.empty((n, f, oh, ow), dtype=np.result_type(x, w))
    for a, z in _chunks(x.shape, w.shape, (oh, ow), x.itemsize):
        cols = im2col(_pad_channel_major(x[a:z], padding), (kh, kw), stride)
        y[a:z] = (wm @ cols).reshape(f, z - a, oh, ow).transpose(1, 0, 2, 3)
    y += b.reshape(1, f, 1, 1)
    return y, Conv2dCache(x=x)


def conv2d_backward(
    dy: np.ndarray, cache: Conv2dCache, w: np.ndarray, stride: tuple[int, int], padding: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of ``conv2d_forward``.

    dy: (N, F, OH, OW); w: (F, C, KH, KW).
    Returns dx: (N, C, H, W), dw: (F, C, KH, KW), db: (F,).
    """
    x = cache.x
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    (ph, pw), oh, ow = padding, dy.shape[2], dy.shape[3]
    wm = w.reshape(f, -1)
    dwm = np.zeros_like(wm)
    dx = np.empty(x.shape, dtype=dy.dtype)
    for a, z in _chunks(x.shape, w.shape, (oh, ow), x.itemsize):
        cols = im2col(_pad_channel_major(x[a:z], padding), (kh, kw), stride)  # (C*KH*KW, (z-a)*OH*OW)
        dym = np.ascontiguousarray(dy[a:z].transpose(1, 0, 2, 3)).reshape(f, (z - a) * oh * ow)
        dwm += dym @ cols.T
        dxp = col2im(wm.T @ dym, (c, z - a, h + 2 * ph, wd + 2 * pw), (kh, kw), stride)
        dx[a:z] = dxp[:, :, ph : ph + h, pw : pw + wd].transpose(1, 0, 2, 3)
    return dx, dwm.reshape(w.shape), dy.sum(axis=(0, 2, 3))


class Conv2d(Module):
    """``torch.nn.Conv2d``: parameters "weight" (F, C, KH, KW) and "bias" (F,).

    ``kernel``, ``stride`` and ``padding`` are an int or an (h, w) pair; padding is zeros.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel, self.stride, self.padding = _pair(kernel), _pair(stride), _pair(padding)
        self.cache: Conv2dCache | None = None

    def param_shapes(self) -> ParamShapes:
        return [
            ("weight", (self.out_channels, self.in_channels, *self.kernel)),
            ("bias", (self.out_channels,)),
        ]

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        """x: (N, C, H, W) -> (N, F, OH, OW)."""
        y, self.cache = conv2d_forward(
            x, self.params["weight"], self.params["bias"], self.stride, self.padding
        )
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """dy: (N, F, OH, OW) -> dx: (N, C, H, W); adds into grads "weight" and "bias"."""
        assert self.cache is not None, "backward before forward"
        dx, dw, db = conv2d_backward(dy, self.cache, self.params["weight"], self.stride, self.padding)
        self.grads["weight"] += dw
        self.grads["bias"] += db
        return dx


# --- pooling -------------------------------------------------------------------


def _windows(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int]):
    """(offset index k = i*KW + j, the (N, C, OH, OW) strided view of offset (i, j)) for every offset."""
    (kh, kw), (sh, sw) = kernel, stride
    oh, ow = output_size(x.shape[2], kh, sh), output_size(x.shape[3], kw, sw)
    for i in range(kh):
        for j in range(kw):
            yield i * kw + j, (slice(None), slice(None), _span(i, oh, sh), _span(j, ow, sw))


def _fold_windows(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], combine: np.ufunc):
    """Each window's elements combined by ``combine`` (``np.maximum``, ``np.add``) one offset at a
    time, in row-major window order. x: (N, C, H, W) -> (N, C, OH, OW)."""
    y = None
    for _, view in _windows(x, kernel, stride):
        y = x[view].copy() if y is None else combine(y, x[view], out=y)
    assert y is not None
    return y


def max_pool_forward(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int]) -> np.ndarray:
    """Window maxima, as ``torch.nn.functional.max_pool2d`` (no padding, floor).

    x: (N, C, H, W). Returns y: (N, C, OH, OW).
    """
    return _fold_windows(x, kernel, stride, np.maximum)


def max_pool_backward(
    dy: np.ndarray, x: np.ndarray, y: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int]
) -> np.ndarray:
    """Routes each window's gradient to its maximum; overlapping windows add.

    dy, y: (N, C, OH, OW); x: (N, C, H, W). Returns dx: (N, C, H, W). Among equal maxima the
    first in row-major window order takes the gradient, as torch's CPU kernel does. (The
    maximum's position is found again here rather than stored by forward: comparisons
    and masks are cheaper than recording an argmax, whose ``np.where``/masked stores are slow.)
    """
    dx = np.zeros(x.shape, dtype=dy.dtype)
    unclaimed = np.ones(y.shape, dtype=bool)  # windows whose maximum is not yet found
    for _, view in _windows(x, kernel, stride):
        hit = x[view] == y
        hit &= unclaimed
        unclaimed &= ~hit
        dx[view] += dy * hit
    return dx


def avg_pool_forward(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int]) -> np.ndarray:
    """Window means, as ``torch.nn.functional.avg_pool2d`` (no padding, floor).

    x: (N, C, H, W). Returns y: (N, C, OH, OW).
    """
    y = _fold_windows(x, kernel, stride, np.add)
    y *= 1.0 / (kernel[0] * kernel[1])
    return y


def avg_pool_backward(
    dy: np.ndarray, x_shape: tuple[int, ...], kernel: tuple[int, int], stride: tuple[int, int]
) -> np.ndarray:
    """Spreads each window's gradient evenly over it; overlapping windows add.

    dy: (N, C, OH, OW). Returns dx: x_shape = (N, C, H, W).
    """
    dx = np.zeros(x_shape, dtype=dy.dtype)
    share = dy * (1.0 / (kernel[0] * kernel[1]))
    for _, view in _windows(dx, kernel, stride):
        dx[view] += share
    return dx


@dataclass
class MaxPoolCache:
    x: np.ndarray  # (N, C, H, W): the input
    y: np.ndarray  # (N, C, OH, OW): its window maxima


class Pool2d(Module):
    """What max and average pooling share: their windows' kernel and stride."""

    def __init__(self, kernel: int | tuple[int, int], stride: int | tuple[int, int] | None = None) -> None:
        super().__init__()
        self.kernel = _pair(kernel)
        self.stride = self.kernel if stride is None else _pair(stride)


class MaxPool2d(Pool2d):
    """``torch.nn.MaxPool2d(kernel, stride)``: no padding, floor; ``stride`` defaults to ``kernel``."""

    cache: MaxPoolCache | None = None

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        """x: (N, C, H, W) -> (N, C, OH, OW)."""
        y = max_pool_forward(x, self.kernel, self.stride)
        self.cache = MaxPoolCache(x=x, y=y)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """dy: (N, C, OH, OW) -> dx: (N, C, H, W)."""
        assert self.cache is not None, "backward before forward"
        return max_pool_backward(dy, self.cache.x, self.cache.y, self.kernel, self.stride)


@dataclass
class AvgPoolCache:
    x_shape: tuple[int, ...]  # (N, C, H, W)


class AvgPool2d(Pool2d):
    """``torch.nn.AvgPool2d(kernel, stride)``: no padding, floor; ``stride`` defaults to ``kernel``."""

    cache: AvgPoolCache | None = None

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        """x: (N, C, H, W) -> (N, C, OH, OW)."""
        self.cache = AvgPoolCache(x_shape=x.shape)
        return avg_pool_forward(x, self.kernel, self.stride)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """dy: (N, C, OH, OW) -> dx: (N, C, H, W)."""
        assert self.cache is not None, "backward before forward"
        return avg_pool_backward(dy, self.cache.x_shape, self.kernel, self.stride)
