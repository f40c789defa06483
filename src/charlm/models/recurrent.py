"""`rnn`, `gru` and `lstm`: one body over torch.nn's recurrent layers (the fast step: charlm.generation.fastgen)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from charlm.config.model_options import RecurrentOptions
from charlm.models import register_model
from charlm.device.precision import run_rnn

RecurrentState = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


# A token the training text holds fewer times than this cannot be trusted with an input row of its
# own: Adam moves a row by about lr per element each time its token appears, so a row seen fewer
# than ~1/lr times (77-100 at the shipped rates) stays mostly its random start. Read from the zero
# state, such a row threw the state where training never went and the model never recovered
# (docs/derailing.md: `[` or `V` starting a prompt); scaled toward zero it still could (`"`, seen 28
# times, from the zero state sent an LSTM's cells counting up without end). So the models with an
# embedding read a rare token as a blend of its own row and the mean row, trusting its own row by
# count / RARE_TOKEN_COUNT (shrinkage toward the mean, as for any rare category); the blend is part
# of the model (a buffer saved with the weights), so training adapts to it.
RARE_TOKEN_COUNT = 100


def trust_inputs_by_count(model: nn.Module, counts) -> None:
    """Tell a new model how far to trust each token's input row, from `counts` per id in the training split."""
    if not getattr(model, "trusts_inputs_by_count", False):
        return
    trust = (torch.as_tensor(counts, dtype=torch.float32) / RARE_TOKEN_COUNT).clamp(max=1.0)
    row_trust = getattr(model, "row_trust", None)
    if row_trust is not None:
        row_trust.copy_(trust.to(row_trust))
        return
    embedding = getattr(model, "embedding", None)
    if isinstance(embedding, nn.Embedding):  # the book's scratch RNN: its rare rows start scaled toward zero
        with torch.no_grad():
            embedding.weight.mul_(trust[:, None].to(embedding.weight))


class RecurrentLM(nn.Module):
    """Input (one-hot or embedding) → stacked recurrent layers → dropout → linear decoder.

    Subclasses only pick the torch.nn layer.
    """

    trainable = True
    trusts_inputs_by_count = True  # see trust_inputs_by_count
    layer_class: type[nn.RNNBase] = nn.RNN

    def __init__(self, vocab_size: int, options: RecurrentOptions) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size = options.hidden_size
        self.num_layers = num_layers = options.num_layers
        embedding_dim, dropout = options.embedding_dim, options.dropout
        # embedding_dim None means one-hot input, as in D2L: the layer's input_size is V.
        self.embedding = None if embedding_dim is None else nn.Embedding(vocab_size, embedding_dim)
        if self.embedding is not None:  # per token, how far its own input row is trusted (trust_inputs_by_count)
            self.register_buffer("row_trust", torch.ones(vocab_size))
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

    def mean_row(self) -> torch.Tensor:
        """(E,): the mean embedding row, weighted by trust: what a rare token mostly reads as."""
        return (self.row_trust @ self.embedding.weight) / self.row_trust.sum()

    def input_rows(self, ids: torch.Tensor | None = None, mean: torch.Tensor | None = None) -> torch.Tensor:
        """Input rows as the model reads them, (..., E) for `ids` or (V, E): rare ones blended with the mean."""
        weight, trust = self.embedding.weight, self.row_trust
        rows = weight if ids is None else F.embedding(ids, weight)
        own = trust[:, None] if ids is None else trust[ids][..., None]
        mean = self.mean_row() if mean is None else mean
        return own * rows + (1 - own) * mean  # exactly `rows` where own = 1

    def _inputs(self, ids: torch.Tensor) -> torch.Tensor:
        if self.embedding is not None:
            return self.input_rows(ids)  # (B, T, E)
        # One-hot rather than an identity lookup table: a (V, V) buffer would cost V² memory
        # for word-level vocabularies, while one_hot allocates only (B, T, V).
        return F.one_hot(ids, self.vocab_size).to(self.decoder.weight.dtype)  # (B, T, V)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints from before row_trust existed trust every row, as their model did.
        if self.embedding is not None and prefix + "row_trust" not in state_dict:
            state_dict[prefix + "row_trust"] = torch.ones_like(self.row_trust)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(
        self, ids: torch.Tensor, state: RecurrentState | None = None
    ) -> tuple[torch.Tensor, RecurrentState]:
        """ids (B, T) → logits (B, T, V) and the state after the last step."""
        if state is None:
            state = self.init_state(ids.shape[0], ids.device)
        outputs, state = run_rnn(self.rnn, self._inputs(ids), state)  # (B, T, H); fp32 under bf16 on CUDA
        return self.decoder(self.dropout(outputs)), state


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


@register_model("lstm")
class LSTMLM(RecurrentLM):
    """LSTM via nn.LSTM; the state is the pair (h, c), each (num_layers, B, H)."""

    layer_class = nn.LSTM

    def init_state(self, batch_size, device=None):
        h = super().init_state(batch_size, device)
        return h, torch.zeros_like(h)

    @staticmethod
    def eval_state_view(state):
        """(h, tanh(c)): the cell reaches every output only through tanh (h = o ⊙ tanh(c)).

        Batched evaluation compares states through this view. A trained LSTM keeps a few cells
        saturated at |c| ~ 100 for thousands of characters; two passes that differ there by 0.2
        agree on every output, and comparing raw c would rescore whole segments for nothing
        (docs/evaluation.md: the measured effect on the perplexity).
        """
        h, c = state
        return h, torch.tanh(c)
