"""`rnn`, `gru` and `lstm`: one body over torch.nn's recurrent layers, with a fast one-step path."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from charlm.errors import ConfigError
from charlm.models import check_dropout, check_positive_int, register_model

RecurrentState = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class RecurrentLM(nn.Module):
    """Input (one-hot or embedding) → stacked recurrent layers → dropout → linear decoder.

    Subclasses only pick the torch.nn layer and its single-step cell function.
    """

    trainable = True
    layer_class: type[nn.RNNBase] = nn.RNN

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int = 256,
        num_layers: int = 1,
        dropout: float = 0.0,
        embedding_dim: int | None = None,
        tie_weights: bool = False,
    ) -> None:
        super().__init__()
        self.vocab_size = check_positive_int("vocab_size", vocab_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.num_layers = check_positive_int("num_layers", num_layers)
        dropout = check_dropout(dropout)
        if embedding_dim is not None:
            check_positive_int("embedding_dim", embedding_dim)
        if tie_weights and embedding_dim != hidden_size:
            raise ConfigError(
                "tie_weights needs embedding_dim == hidden_size "
                f"(got embedding_dim={embedding_dim}, hidden_size={hidden_size}); "
                "set embedding_dim to the hidden size or tie_weights to false"
            )
        # embedding_dim None means one-hot input, as in D2L: the layer's input_size is V.
        self.embedding = None if embedding_dim is None else nn.Embedding(vocab_size, embedding_dim)
        self.rnn = self.layer_class(
            input_size=vocab_size if embedding_dim is None else embedding_dim,
            hidden_size=hidden_size,
            num_layers=num_layers,
            # torch.nn warns about dropout with a single layer, where it would do nothing.
            dropout=dropout if num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.dropout = nn.Dropout(dropout)
        self.decoder = nn.Linear(hidden_size, vocab_size)
        if tie_weights:
            self.decoder.weight = self.embedding.weight  # both (V, H)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> RecurrentState:
        """Zeros of shape (num_layers, B, H); a pair (h, c) for the LSTM."""
        weight = self.decoder.weight
        return torch.zeros(
            self.num_layers, batch_size, self.hidden_size, device=device, dtype=weight.dtype
        )

    def _inputs(self, ids: torch.Tensor) -> torch.Tensor:
        if self.embedding is not None:
            return self.embedding(ids)  # (B, T, E)
        # One-hot rather than an identity lookup table: a (V, V) buffer would cost V² memory
        # for word-level vocabularies, while one_hot allocates only (B, T, V).
        return F.one_hot(ids, self.vocab_size).to(self.decoder.weight.dtype)  # (B, T, V)

    def forward(
        self, ids: torch.Tensor, state: RecurrentState | None = None
    ) -> tuple[torch.Tensor, RecurrentState]:
        """ids (B, T) → logits (B, T, V) and the state after the last step."""
        if state is None:
            state = self.init_state(ids.shape[0], ids.device)
        if ids.shape[1] == 1 and not self.training:
            return self._step(ids[:, 0], state)
        outputs, state = self.rnn(self._inputs(ids), state)  # (B, T, H)
        return self.decoder(self.dropout(outputs)), state

    # --- one character at a time, for generation -------------------------------------------
    # Calling nn.RNN/nn.LSTM for a single step pays for its sequence machinery (≈3k chars/s
    # for a 512-unit LSTM at batch 1 on CPU). The cell functions on the same weights compute
    # the same numbers several times faster. Dropout is off in eval mode, so it is skipped.

    def _step(self, ids: torch.Tensor, state: RecurrentState) -> tuple[torch.Tensor, RecurrentState]:
        """ids (B,) → logits (B, 1, V), computed with the per-layer cell function."""
        if self.embedding is not None:
            x = self.embedding(ids)  # (B, E)
        else:
            x = F.one_hot(ids, self.vocab_size).to(self.decoder.weight.dtype)  # (B, V)
        new_layers = []
        for layer, weights in enumerate(self.rnn.all_weights):
            x, layer_state = self._cell(x, self._layer_state(state, layer), *weights)
            new_layers.append(layer_state)
        logits = F.linear(x, self.decoder.weight, self.decoder.bias)  # (B, V)
        return logits.unsqueeze(1), self._stack_states(new_layers)

    def _layer_state(self, state: RecurrentState, layer: int) -> torch.Tensor:
        return state[layer]  # (B, H)

    def _stack_states(self, layers: list[torch.Tensor]) -> RecurrentState:
        return torch.stack(layers)  # (L, B, H)

    def _cell(self, x, h, w_ih, w_hh, b_ih, b_hh):
        h = torch.rnn_tanh_cell(x, h, w_ih, w_hh, b_ih, b_hh)  # (B, H)
        return h, h


@register_model("rnn")
class RNNLM(RecurrentLM):
    """Elman RNN with tanh, via nn.RNN."""

    layer_class = nn.RNN


@register_model("gru")
class GRULM(RecurrentLM):
    """GRU via nn.GRU.

    A hand-written GRU (input projections for all steps in one matmul, fused gate matmul in
    the loop) was measured against nn.GRU on CPU at H=256..512, B=32..64, T=64: 0.90-0.99×
    as plain Python, 1.06-1.19× under the now-deprecated torch.jit.script, 1.0-1.19× with a
    hand-written backward. nn.GRU is already matmul-bound there (its 3× gap to nn.RNN is the
    3× larger recurrent matmul), so the gain did not pay for a second implementation.
    """

    layer_class = nn.GRU

    def _cell(self, x, h, w_ih, w_hh, b_ih, b_hh):
        h = torch.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh)  # (B, H)
        return h, h


@register_model("lstm")
class LSTMLM(RecurrentLM):
    """LSTM via nn.LSTM; the state is the pair (h, c), each (num_layers, B, H)."""

    layer_class = nn.LSTM

    def init_state(self, batch_size, device=None):
        h = super().init_state(batch_size, device)
        return h, torch.zeros_like(h)

    def _layer_state(self, state, layer):
        return state[0][layer], state[1][layer]  # (B, H) each

    def _stack_states(self, layers):
        hs, cs = zip(*layers)
        return torch.stack(hs), torch.stack(cs)

    def _cell(self, x, hc, w_ih, w_hh, b_ih, b_hh):
        h, c = torch.lstm_cell(x, hc, w_ih, w_hh, b_ih, b_hh)  # (B, H) each
        return h, (h, c)
