"""A small causal transformer for next-character prediction on Shakespeare: a user's own model.

LEAF's Shakespeare task: each sample is a window of 80 characters (token ids in LEAF's
80-character vocabulary, ``clients.data.leaf.ALL_LETTERS``) and its label is the character
that follows. The model embeds the tokens, adds learned positions, runs pre-norm
transformer layers under a causal mask (each position attends to itself and the positions
before it) and returns the logits of the last position: (N, 80) token ids -> (N, vocab)
logits, what the built-in ``charlstm`` returns. Named in a config as
``examples.shakespeare_transformer.model:transformer`` (run from the repository root).
"""

from __future__ import annotations

import torch
from torch import nn

LEAF_VOCAB = 80  # len(clients.data.leaf.ALL_LETTERS)
LEAF_WINDOW = 80  # characters in each LEAF Shakespeare sample


class CharTransformer(nn.Module):
    """(N, seq_len) int64 token ids -> (N, vocab) logits of the character after the window."""

    def __init__(self, vocab: int, seq_len: int, d_model: int, heads: int, layers: int, dropout: float):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.position = nn.Parameter(torch.zeros(seq_len, d_model))
        nn.init.normal_(self.position, std=0.02)
        self.layers = nn.ModuleList(_pre_norm_layer(d_model, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        h = self.embed(tokens) + self.position[:length]
        # -inf above the diagonal: position i attends to positions j <= i only. Built per call
        # rather than kept as a buffer, so the model has no state besides its parameters.
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device)
        for layer in self.layers:
            h = layer(h, src_mask=mask, is_causal=True)
        return self.head(self.norm(h[:, -1]))


def _pre_norm_layer(d_model: int, heads: int, dropout: float) -> nn.TransformerEncoderLayer:
    """Self-attention and a 4x-wide feed-forward block, each after a LayerNorm (pre-norm:
    trains stably without learning-rate warm-up, which fresh local optimisers lack)."""
    return nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout, batch_first=True, norm_first=True)


def transformer(
    vocab: int = LEAF_VOCAB,
    seq_len: int = LEAF_WINDOW,
    d_model: int = 64,
    heads: int = 4,
    layers: int = 2,
    dropout: float = 0.0,
) -> nn.Module:
    """A causal character transformer (about 110k parameters with the defaults)."""
    if d_model % heads:
        raise ValueError(f"d_model {d_model} must be a multiple of heads {heads}")
    return CharTransformer(vocab, seq_len, d_model, heads, layers, dropout)
