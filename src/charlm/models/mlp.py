"""`mlp`: D2L's Markov model — an MLP that predicts each token from the τ tokens before it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from charlm.config.model_options import MLPOptions
from charlm.models import register_model


@register_model("mlp")
class WindowMLP(nn.Module):
    """Embed the previous `context` tokens, concatenate, tanh hidden layer, dropout, linear.

    The state is the last τ tokens (B, τ), so a text fed in chunks gives the same logits as
    one pass. Before the start of a text the window is filled with the padding id V, an
    extra embedding row that no real token uses (not `<unk>`, which is id 0).
    """

    trainable = True

    def __init__(self, vocab_size: int, options: MLPOptions) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.context = context = options.context
        self.padding_id = vocab_size
        # embedding_dim None means one-hot input (V + 1 columns per window slot, as in D2L).
        self.embedding = None
        slot_size = vocab_size + 1
        if options.embedding_dim is not None:
            slot_size = options.embedding_dim
            self.embedding = nn.Embedding(vocab_size + 1, options.embedding_dim)
        self.hidden = nn.Linear(context * slot_size, options.hidden_size)
        self.dropout = nn.Dropout(options.dropout)
        self.decoder = nn.Linear(options.hidden_size, vocab_size)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
        """A window of padding ids (B, τ): nothing precedes the first token."""
        shape = (batch_size, self.context)
        return torch.full(shape, self.padding_id, dtype=torch.long, device=device)

    def eval_history(self, position: int) -> int:
        """Tokens before `position` that rebuild the state there from init_state: the window (batched_eval)."""
        return min(position, self.context)

    @property
    def eval_min_segment(self) -> int:
        return self.context

    def forward(
        self, ids: torch.Tensor, state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, T) → logits (B, T, V) and the last τ tokens seen (B, τ)."""
        if state is None:
            state = self.init_state(ids.shape[0], ids.device)
        sequence = torch.cat([state, ids], dim=1)  # (B, τ + T)
        # logits[:, t] predict the token after ids[:, t], so window t is ids[:, t−τ+1 .. t]:
        # windows 1..T of the T+1 windows in the sequence.
        windows = sequence.unfold(1, self.context, 1)[:, 1:]  # (B, T, τ)
        if self.embedding is None:
            slots = F.one_hot(windows, self.vocab_size + 1).to(self.decoder.weight.dtype)
        else:
            slots = self.embedding(windows)  # (B, T, τ, E)
        hidden = torch.tanh(self.hidden(slots.flatten(2)))  # (B, T, hidden_size)
        logits = self.decoder(self.dropout(hidden))  # (B, T, V)
        return logits, sequence[:, -self.context :]
