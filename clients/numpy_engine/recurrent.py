"""Recurrent layers: token embedding, a stacked LSTM (batch first) and its last step.

The LSTM follows ``torch.nn.LSTM(batch_first=True)`` exactly: zero initial
state, gate order (i, f, g, o) in the stacked weights, and per layer k

    a_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh            (N, 4H)
    i, f, o = sigmoid(a_t[i]), sigmoid(a_t[f]), sigmoid(a_t[o]);  g = tanh(a_t[g])
    c_t = f * c_{t-1} + i * g;   h_t = o * tanh(c_t)

Its backward is backpropagation through time, vectorised over the batch:
the recurrence runs step by step, but everything that does not depend on the
previous step (the input projection for all steps, the weight gradients, the
input gradient, the gates' local derivatives) is one matmul or one array op.

Time-major (T, N, .) arrays are used inside so that each step is a
contiguous slice; the module's interface is batch first (N, T, .).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clients.numpy_engine.core import Module, ParamShapes


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Stable logistic function, any shape: ``0.5 * (1 + tanh(x / 2))`` never overflows."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


# --------------------------------------------------------------------------- Embedding


@dataclass
class EmbeddingCache:
    """What ``Embedding.backward`` needs."""

    ids: np.ndarray  # (N, T) integer token ids


def embedding_forward(ids: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """ids: (N, T) integers in [0, V); weight: (V, E) -> (N, T, E), the rows of ``weight``."""
    return weight[ids]


def embedding_weight_grad(ids: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The weight gradient as (rows, row_grads): dW[rows] = row_grads, all other rows zero.

    ids: (N, T) integers; dy: (N, T, E). Returns rows (U,) the distinct ids,
    sorted, and row_grads (U, E), the sum of dy over each id's occurrences.
    Sort + ``np.add.reduceat`` (equivalent to ``np.add.at`` into a (V, E) zero
    array, without touching the rows no id uses).
    """
    flat_ids = ids.reshape(-1)
    flat_dy = dy.reshape(flat_ids.size, dy.shape[-1])
    if flat_ids.size == 0:
        return flat_ids, flat_dy
    order = np.argsort(flat_ids, kind="stable")
    sorted_ids = flat_ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    return sorted_ids[starts], np.add.reduceat(flat_dy[order], starts, axis=0)


class Embedding(Module):
    """``torch.nn.Embedding``: ids (N, T) -> vectors (N, T, E); parameter "weight" (V, E)."""

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.cache: EmbeddingCache | None = None

    def param_shapes(self) -> ParamShapes:
        return [("weight", (self.num_embeddings, self.embedding_dim))]

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        """x: (N, T) integer ids in [0, V) -> (N, T, E) in the weight's dtype."""
        if not np.issubdtype(x.dtype, np.integer):
            raise ValueError(f"Embedding takes integer ids, got dtype {x.dtype}")
        if x.size and (x.min() < 0 or x.max() >= self.num_embeddings):
            raise ValueError(
                f"Embedding ids must lie in [0, {self.num_embeddings}), got [{x.min()}, {x.max()}]"
            )
        self.cache = EmbeddingCache(ids=x)
        return embedding_forward(x, self.params["weight"])

    def backward(self, dy: np.ndarray) -> None:
        """dy: (N, T, E); adds into grads "weight" (V, E). Returns None: integer ids have no gradient."""
        if self.cache is None:
            raise RuntimeError("Embedding.backward called before forward")
        rows, row_grads = embedding_weight_grad(self.cache.ids, dy)
        self.grads["weight"][rows] += row_grads  # rows are distinct, so fancy-index += accumulates
        return None


# --------------------------------------------------------------------------- LSTM


@dataclass
class LSTMLayerCache:
    """One layer's forward pass, every per-step array preallocated once and indexed by step t.

    Index t of ``gates``/``tanh_c`` is step t; ``h`` and ``c`` carry the
    zero initial state at index 0, so step t reads h[t], c[t] and writes
    h[t + 1], c[t + 1].
    """

    x: np.ndarray  # (T, N, I): the layer's input, time major
    gates: np.ndarray  # (T, N, 4H): activated gates i, f, g, o (sigmoid, sigmoid, tanh, sigmoid)
    c: np.ndarray  # (T + 1, N, H): cell states, c[0] = 0
    tanh_c: np.ndarray  # (T, N, H): tanh(c[t + 1])
    h: np.ndarray  # (T + 1, N, H): hidden states, h[0] = 0; h[1:] is the layer's output


def _gate_affine(hidden: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift), each (4H,), with act(a) = tanh(scale * a) * scale + shift for all four gates.

    sigmoid(a) = 0.5 * tanh(a / 2) + 0.5 for i, f, o (scale 0.5, shift 0.5);
    tanh(a) for g (scale 1, shift 0). One tanh call activates every gate.
    """
    scale = np.full(4 * hidden, 0.5, dtype=dtype)
    shift = np.full(4 * hidden, 0.5, dtype=dtype)
    scale[2 * hidden : 3 * hidden] = 1.0
    shift[2 * hidden : 3 * hidden] = 0.0
    return scale, shift


def lstm_layer_forward(
    x: np.ndarray, w_ih: np.ndarray, w_hh: np.ndarray, b_ih: np.ndarray, b_hh: np.ndarray
) -> tuple[np.ndarray, LSTMLayerCache]:
    """One LSTM layer over a whole sequence from a zero state.

    x: (T, N, I) time major; w_ih: (4H, I); w_hh: (4H, H); b_ih, b_hh: (4H,).
    Returns the hidden states h: (T, N, H) (a view into the cache) and the cache.
    """
    steps, batch, _ = x.shape
    hidden = w_hh.shape[1]
    dtype = w_hh.dtype
    scale, shift = _gate_affine(hidden, dtype)
    # Input projection of every step in one matmul, pre-scaled for the fused activation.
    gates = (x.reshape(steps * batch, -1) @ w_ih.T + (b_ih + b_hh)).reshape(steps, batch, 4 * hidden)
    gates *= scale
    w_hh_scaled = w_hh.T * scale  # (H, 4H)
    h = np.zeros((steps + 1, batch, hidden), dtype=dtype)
    c = np.zeros((steps + 1, batch, hidden), dtype=dtype)
    tanh_c = np.empty((steps, batch, hidden), dtype=dtype)
    recur = np.empty((batch, 4 * hidden), dtype=dtype)
    i_g = np.empty((batch, hidden), dtype=dtype)
    for t in range(steps):
        a = gates[t]
        np.matmul(h[t], w_hh_scaled, out=recur)
        a += recur
        np.tanh(a, out=a)
        a *= scale
        a += shift
        i, f, g, o = (
            a[:, :hidden],
            a[:, hidden : 2 * hidden],
            a[:, 2 * hidden : 3 * hidden],
            a[:, 3 * hidden :],
        )
        np.multiply(f, c[t], out=c[t + 1])
        np.multiply(i, g, out=i_g)
        c[t + 1] += i_g
        np.tanh(c[t + 1], out=tanh_c[t])
        np.multiply(o, tanh_c[t], out=h[t + 1])
    return h[1:], LSTMLayerCache(x=x, gates=gates, c=c, tanh_c=tanh_c, h=h)


def lstm_layer_backward(
    dh_out: np.ndarray, cache: LSTMLayerCache, w_ih: np.ndarray, w_hh: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Backpropagation through time for one layer.

    dh_out: (T, N, H), the gradient on the layer's outputs h[1:];
    w_ih: (4H, I); w_hh: (4H, H).
    Returns dx (T, N, I), dw_ih (4H, I), dw_hh (4H, H) and db (4H,), the
    gradient of both b_ih and b_hh (they enter only as their sum).
    """
    steps, batch, hidden = dh_out.shape
    gates, tanh_c = cache.gates, cache.tanh_c
    # Local derivatives of every step at once: d act / d a per gate, and o * tanh'(c).
    dact = gates * (1.0 - gates)
    g_all = gates[:, :, 2 * hidden : 3 * hidden]
    dact[:, :, 2 * hidden : 3 * hidden] = 1.0 - g_all * g_all
    o_dtanh = gates[:, :, 3 * hidden :] * (1.0 - tanh_c * tanh_c)

    da = np.empty_like(gates)  # (T, N, 4H): gradient on the gate pre-activations
    dh_next = np.zeros((batch, hidden), dtype=dh_out.dtype)
    dc = np.zeros((batch, hidden), dtype=dh_out.dtype)  # carries dL/dc_t * f_t into step t - 1
    for t in reversed(range(steps)):
        dh = dh_out[t] + dh_next
        da_t, g_t = da[t], gates[t]
        np.multiply(dh, tanh_c[t], out=da_t[:, 3 * hidden :])  # d o
        dh *= o_dtanh[t]
        dc += dh  # dL/dc_t
        np.multiply(dc, g_t[:, 2 * hidden : 3 * hidden], out=da_t[:, :hidden])  # d i
        np.multiply(dc, cache.c[t], out=da_t[:, hidden : 2 * hidden])  # d f
        np.multiply(dc, g_t[:, :hidden], out=da_t[:, 2 * hidden : 3 * hidden])  # d g
        da_t *= dact[t]
        dc *= g_t[:, hidden : 2 * hidden]
        np.matmul(da_t, w_hh, out=dh_next)

    da_flat = da.reshape(steps * batch, 4 * hidden)
    dw_ih = da_flat.T @ cache.x.reshape(steps * batch, -1)
    dw_hh = da_flat.T @ cache.h[:-1].reshape(steps * batch, hidden)
    db = da_flat.sum(axis=0)
    dx = (da_flat @ w_ih).reshape(steps, batch, -1)
    return dx, dw_ih, dw_hh, db


class LSTM(Module):
    """``torch.nn.LSTM(input_size, hidden_size, num_layers, batch_first=True)`` from a zero state.

    x: (N, T, I) -> the last layer's hidden states (N, T, H). Parameters per
    layer k: "weight_ih_l{k}" (4H, I_k), "weight_hh_l{k}" (4H, H),
    "bias_ih_l{k}" (4H,), "bias_hh_l{k}" (4H,), with I_0 = I and I_k = H.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"LSTM needs num_layers >= 1, got {num_layers}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.caches: list[LSTMLayerCache] = []

    def param_shapes(self) -> ParamShapes:
        four_h, shapes = 4 * self.hidden_size, []
        for k in range(self.num_layers):
            layer_in = self.input_size if k == 0 else self.hidden_size
            shapes += [
                (f"weight_ih_l{k}", (four_h, layer_in)),
                (f"weight_hh_l{k}", (four_h, self.hidden_size)),
                (f"bias_ih_l{k}", (four_h,)),
                (f"bias_hh_l{k}", (four_h,)),
            ]
        return shapes

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        """x: (N, T, I) -> (N, T, H), computed in the parameters' dtype."""
        if x.ndim != 3 or x.shape[2] != self.input_size:
            raise ValueError(f"LSTM({self.input_size}, ...) takes (N, T, {self.input_size}), got {x.shape}")
        p = self.params
        h = np.ascontiguousarray(x.transpose(1, 0, 2), dtype=p["weight_hh_l0"].dtype)  # (T, N, I)
        self.caches = []
        for k in range(self.num_layers):
            h, cache = lstm_layer_forward(
                h, p[f"weight_ih_l{k}"], p[f"weight_hh_l{k}"], p[f"bias_ih_l{k}"], p[f"bias_hh_l{k}"]
            )
            self.caches.append(cache)
        return np.ascontiguousarray(h.transpose(1, 0, 2))

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """dy: (N, T, H) -> dx: (N, T, I); adds into every layer's four parameter gradients."""
        if not self.caches:
            raise RuntimeError("LSTM.backward called before forward")
        p, grads = self.params, self.grads
        dh = np.ascontiguousarray(dy.transpose(1, 0, 2))  # (T, N, H)
        for k in reversed(range(self.num_layers)):
            dh, dw_ih, dw_hh, db = lstm_layer_backward(
                dh, self.caches[k], p[f"weight_ih_l{k}"], p[f"weight_hh_l{k}"]
            )
            grads[f"weight_ih_l{k}"] += dw_ih
            grads[f"weight_hh_l{k}"] += dw_hh
            grads[f"bias_ih_l{k}"] += db
            grads[f"bias_hh_l{k}"] += db
        return np.ascontiguousarray(dh.transpose(1, 0, 2))


# --------------------------------------------------------------------------- LastStep


@dataclass
class LastStepCache:
    """What ``LastStep.backward`` needs: the input's shape and dtype."""

    shape: tuple[int, ...]  # (N, T, H)
    dtype: np.dtype


class LastStep(Module):
    """x: (N, T, H) -> x[:, -1]: (N, H), the last time step. No parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.cache: LastStepCache | None = None

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        """x: (N, T, H) -> (N, H)."""
        if x.ndim != 3:
            raise ValueError(f"LastStep takes (N, T, H), got {x.shape}")
        self.cache = LastStepCache(shape=x.shape, dtype=x.dtype)
        return x[:, -1]

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """dy: (N, H) -> dx: (N, T, H), dy at the last step and zeros elsewhere."""
        if self.cache is None:
            raise RuntimeError("LastStep.backward called before forward")
        dx = np.zeros(self.cache.shape, dtype=self.cache.dtype)
        dx[:, -1] = dy
        return dx
