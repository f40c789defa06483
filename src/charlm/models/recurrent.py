"""`rnn`, `gru` and `lstm`: one body over torch.nn's recurrent layers, with a fast one-step path."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from charlm.model_options import RecurrentOptions
from charlm.models import register_model
from charlm.precision import run_rnn

RecurrentState = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class RecurrentLM(nn.Module):
    """Input (one-hot or embedding) → stacked recurrent layers → dropout → linear decoder.

    Subclasses only pick the torch.nn layer and its single-step cell function.
    """

    trainable = True
    layer_class: type[nn.RNNBase] = nn.RNN

    def __init__(self, vocab_size: int, options: RecurrentOptions) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size = options.hidden_size
        self.num_layers = num_layers = options.num_layers
        embedding_dim, dropout = options.embedding_dim, options.dropout
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
        if options.tie_weights:  # the options check that embedding_dim == hidden_size
            self.decoder.weight = self.embedding.weight  # both (V, H)

    def init_state(
        self, batch_size: int, device: torch.device | str | None = None
    ) -> RecurrentState:
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
            return self._step(ids, state)
        outputs, state = run_rnn(self.rnn, self._inputs(ids), state)  # (B, T, H); fp32 under bf16 on CUDA
        return self.decoder(self.dropout(outputs)), state

    # --- one character at a time, for generation -------------------------------------------
    # Calling nn.RNN/nn.LSTM for a single step pays for its sequence machinery. ATen's cell
    # functions (torch.rnn_tanh_cell, gru_cell, lstm_cell) on the same weights compute the
    # same step with little Python around them. Measured at batch 1, H=512, one CPU thread:
    # RNN 12.7k chars/s (nn.RNN 7.9k), LSTM 2.9k (nn.LSTM 1.2k), GRU 3.5k (nn.GRU 3.0k);
    # a step written with plain matmuls was 5-10% slower than the cell functions.
    # Dropout is off in eval mode, so it is skipped.

    def _step(
        self, ids: torch.Tensor, state: RecurrentState
    ) -> tuple[torch.Tensor, RecurrentState]:
        """ids (B, 1) → logits (B, 1, V), one cell step per layer."""
        if torch.is_inference_mode_enabled():
            return self._inference_step(ids, state)
        decoder = self.decoder
        if self.embedding is None:
            # scatter_ rather than F.one_hot, whose range checks cost as much as the step.
            x = decoder.weight.new_zeros(ids.shape[0], self.vocab_size)
            x.scatter_(1, ids, 1.0)  # (B, V)
        else:
            x = F.embedding(ids[:, 0], self.embedding.weight)  # (B, E)
        # _flat_weights is nn.RNNBase's own list (w_ih, w_hh, b_ih, b_hh per layer); reading
        # it skips the 4 Module.__getattr__ calls per layer of `all_weights` (≈15% of a step).
        weights = self.rnn._flat_weights
        new_states = []
        for layer in range(self.num_layers):
            layer_weights = weights[4 * layer : 4 * layer + 4]
            x, layer_state = self._cell(x, self._layer_state(state, layer), layer_weights)
            new_states.append(layer_state)
        logits = F.linear(x, decoder.weight, decoder.bias)  # (B, V)
        return logits.unsqueeze(1), self._stack_states(new_states)

    # Under inference_mode (generation) the first layer's input projection W_ih·x + b is read
    # from a precomputed (V, G) table, and the recurrent and output weights are kept transposed
    # so each product is one addmm on contiguous memory. Batch 1, H=512, one thread: RNN
    # 45k chars/s against 15-22k for the cell-function step above. The tables are rebuilt
    # whenever a parameter changes (an optimizer step or load_state_dict bumps its version).

    def _step_tables(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        cached = self.__dict__.get("_tables")
        if cached is not None:
            key, params, tables = cached
            if key == [p._version for p in params] + [params[0].data_ptr()]:
                return tables
        params = list(self.parameters())
        w_ih, w_hh, b_ih, b_hh = self.rnn._flat_weights[:4]
        inputs = w_ih.t() if self.embedding is None else self.embedding.weight @ w_ih.t()  # (V, G)
        tables = (
            (inputs + self._input_bias(b_ih, b_hh)).contiguous(),
            w_hh.t().contiguous(),  # (H, G)
            self.decoder.weight.t().contiguous(),  # (H, V)
            self._hidden_bias(b_hh),
        )
        self.__dict__["_tables"] = ([p._version for p in params] + [params[0].data_ptr()], params, tables)
        return tables

    def _input_bias(self, b_ih: torch.Tensor, b_hh: torch.Tensor) -> torch.Tensor:
        return b_ih + b_hh  # the tanh RNN and the LSTM add both biases before the nonlinearity

    def _hidden_bias(self, b_hh: torch.Tensor) -> torch.Tensor | None:
        return None

    def _inference_step(self, ids, state):
        table, w_hh_t, decoder_t, hidden_bias = self._step_tables()
        projected = table[ids[:, 0]]  # (B, G)
        x, first = self._projected_cell(projected, self._layer_state(state, 0), w_hh_t, hidden_bias)
        new_states = [first]
        weights = self.rnn._flat_weights
        for layer in range(1, self.num_layers):
            x, layer_state = self._cell(x, self._layer_state(state, layer), weights[4 * layer : 4 * layer + 4])
            new_states.append(layer_state)
        logits = torch.addmm(self.decoder.bias, x, decoder_t)  # (B, V)
        return logits.unsqueeze(1), self._stack_states(new_states)

    def _projected_cell(self, projected, h, w_hh_t, hidden_bias):
        h = torch.tanh(torch.addmm(projected, h, w_hh_t))  # (B, H)
        return h, h

    def _layer_state(self, state: RecurrentState, layer: int) -> torch.Tensor:
        return state[layer]  # (B, H)

    def _stack_states(self, layers: list) -> RecurrentState:
        return _stack(layers)  # (L, B, H)

    def _cell(self, x, h, weights):
        """One tanh step: (output (B, H), layer state)."""
        h = torch.rnn_tanh_cell(x, h, *weights)
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

    def _cell(self, x, h, weights):
        h = torch.gru_cell(x, h, *weights)  # (B, H)
        return h, h

    def _input_bias(self, b_ih, b_hh):
        return b_ih  # the new-gate term multiplies (W_hn h + b_hn) by r, so b_hh stays apart

    def _hidden_bias(self, b_hh):
        return b_hh

    def _projected_cell(self, projected, h, w_hh_t, hidden_bias):
        hidden = torch.addmm(hidden_bias, h, w_hh_t)  # (B, 3H)
        x_r, x_z, x_n = projected.chunk(3, 1)
        h_r, h_z, h_n = hidden.chunk(3, 1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        h = n + z * (h - n)  # (1 - z) n + z h
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
        return _stack(hs), _stack(cs)

    def _cell(self, x, hc, weights):
        h, c = torch.lstm_cell(x, hc, *weights)  # (B, H) each
        return h, (h, c)

    def _projected_cell(self, projected, hc, w_hh_t, hidden_bias):
        h, c = hc
        i, f, g, o = torch.addmm(projected, h, w_hh_t).chunk(4, 1)  # (B, H) each
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, (h, c)


def _stack(layers) -> torch.Tensor:
    """Per-layer (B, H) states → (L, B, H); unsqueeze is cheaper than stack for one layer."""
    return layers[0].unsqueeze(0) if len(layers) == 1 else torch.stack(layers)
