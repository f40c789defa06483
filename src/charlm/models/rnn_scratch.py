"""`rnn_scratch`: D2L's RNN written out by hand with five parameters and a Python time loop."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from charlm.config.model_options import ScratchRNNOptions
from charlm.models import register_model, scratch_fused


@register_model("rnn_scratch")
class RNNScratch(nn.Module):
    """h_t = tanh(x_t W_xh + h_{t-1} W_hh + b_h),  o_t = h_t W_hq + b_q.

    Initialisation follows nn.RNN and nn.Linear (uniform ±1/√H for every parameter) rather
    than D2L's N(0, 0.01²), so `rnn_scratch` and `rnn` start from the same distribution and
    differ only in implementation; the tiny D2L init also shrinks the recurrent matrix's
    spectral radius to ≈0.2 at H=512, which slows the start of training.
    """

    trainable = True
    trusts_inputs_by_count = True  # see charlm.models.recurrent.trust_inputs_by_count

    def __init__(self, vocab_size: int, options: ScratchRNNOptions) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size = options.hidden_size
        embedding_dim = options.embedding_dim
        # embedding_dim None: one-hot input, so x_t W_xh is row x_t of W_xh.
        input_size = vocab_size
        self.embedding = None
        if embedding_dim is not None:
            input_size = embedding_dim
            self.embedding = nn.Embedding(vocab_size, embedding_dim)
        bound = 1.0 / math.sqrt(hidden_size)

        def uniform(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound))

        self.W_xh = uniform(input_size, hidden_size)
        self.W_hh = uniform(hidden_size, hidden_size)
        self.b_h = uniform(hidden_size)
        self.W_hq = uniform(hidden_size, vocab_size)
        self.b_q = uniform(vocab_size)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Zeros (B, H)."""
        return torch.zeros(batch_size, self.hidden_size, device=device, dtype=self.W_hh.dtype)

    def forward(
        self, ids: torch.Tensor, state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, T) → logits (B, T, V) and h after the last step (B, H)."""
        h = self.init_state(ids.shape[0], ids.device) if state is None else state
        if scratch_fused.applies(self, ids):  # scoring only: the same equations, 1.5x faster
            return scratch_fused.forward(self, ids, h)
        # Everything that does not depend on h is done for all T steps at once.
        if self.embedding is None:
            # one_hot(ids) @ W_xh picks rows; F.embedding does it without the (B, T, V) one-hot.
            x_proj = F.embedding(ids, self.W_xh)  # (B, T, H)
        else:
            x_proj = self.embedding(ids) @ self.W_xh  # (B, T, E) @ (E, H) → (B, T, H)
        x_proj = x_proj + self.b_h
        hiddens = []
        # unbind, not x_proj[:, t]: the backward of indexing allocates a full (B, T, H)
        # gradient per step, which made the loop ≈0.6× nn.RNN; with unbind+addmm it is ≈1×.
        for x_t in x_proj.unbind(1):  # (B, H) each
            h = torch.tanh(torch.addmm(x_t, h, self.W_hh))
            hiddens.append(h)
        outputs = torch.stack(hiddens, 1)  # (B, T, H)
        return outputs @ self.W_hq + self.b_q, h  # (B, T, V)
