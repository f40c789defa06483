"""`ngram`: a counting model of order n, smoothed by add-k or interpolated modified Kneser–Ney."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from charlm.errors import DataError
from charlm.config.model_options import NGramOptions
from charlm.models import register_model

# Columns of context_stats_{k}: per context, for raw counts then for continuation counts,
# the total, and how many followers have count 1, 2 and ≥3 (N1, N2, N3+ of modified KN).
_RAW, _CONT = 0, 4


@register_model("ngram")
class NGramLM(nn.Module):
    """P(w | last n−1 tokens), fit by counting; forward returns log-probabilities (B, T, V).

    Every n-gram of order k is one int64 key (base-V digits), kept sorted with its count in
    buffers, so `state_dict()` is plain tensors; lookups are `torch.searchsorted`. The state
    is the last n−1 tokens (B, n−1); the sentinel V means "before the start", where the
    model uses the longest context it has. `<unk>` (id 0) is counted like any token.

    add_k: (c(h, w) + k) / (c(h) + kV) with the full context h (Laplace when k = 1).
    kneser_ney: interpolated modified Kneser–Ney (Chen & Goodman 1999): discounts D1, D2,
    D3+ per order from counts-of-counts; lower orders use continuation counts N1+(•h w);
    order 1 interpolates with the uniform 1/V.
    """

    trainable = False

    def __init__(self, vocab_size: int, options: NGramOptions) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.order = order = options.order
        self.smoothing = options.smoothing
        self.k = options.k
        self.padding_id = vocab_size
        empty = torch.zeros(0, dtype=torch.long)
        for n in range(1, order + 1):
            self.register_buffer(f"keys_{n}", empty.clone())  # (N_n,) sorted
            self.register_buffer(f"counts_{n}", empty.clone())  # (N_n,)
            if n < order:  # N1+(• g): distinct tokens seen before the n-gram g
                self.register_buffer(f"continuation_{n}", empty.clone())  # (N_n,)
            self.register_buffer(f"context_keys_{n}", empty.clone())  # (C_n,) sorted
            self.register_buffer(f"context_stats_{n}", torch.zeros(0, 8, dtype=torch.long))
        # [order − 1, raw | continuation, D1 | D2 | D3+]
        self.register_buffer("discounts", torch.zeros(order, 2, 3, dtype=torch.float64))
        self.register_buffer("num_tokens", torch.zeros((), dtype=torch.long))

    # --- counting ---------------------------------------------------------------------------

    def fit(self, ids: np.ndarray) -> NGramLM:
        """Count every n-gram of orders 1..n in the 1-D token ids (replaces earlier counts)."""
        ids = np.asarray(ids).reshape(-1).astype(np.int64)
        V = self.vocab_size
        if ids.size and (ids.min() < 0 or ids.max() >= V):
            raise DataError(
                f"token ids must lie in [0, {V}) for this vocabulary; "
                f"found {ids.min()}..{ids.max()}: was the corpus encoded with another vocab?"
            )
        device = self.discounts.device
        keys_by_order, counts_by_order = [], []
        window_keys = ids  # key of the window starting at each position, order n
        for n in range(1, self.order + 1):
            if n > 1:  # extend each window by the token after it: base-V digits
                window_keys = window_keys[:-1] * V + ids[n - 1 :]
            keys, counts = np.unique(window_keys, return_counts=True)
            keys_by_order.append(keys)
            counts_by_order.append(counts.astype(np.int64))
        for n in range(1, self.order + 1):
            keys, counts = keys_by_order[n - 1], counts_by_order[n - 1]
            views = [counts]
            if n < self.order:
                continuation = _continuation_counts(keys, keys_by_order[n], V**n)
                views.append(continuation)
                self._set(f"continuation_{n}", continuation, device)
            self._set(f"keys_{n}", keys, device)
            self._set(f"counts_{n}", counts, device)
            context_keys, stats = _context_stats(keys // V, views)
            self._set(f"context_keys_{n}", context_keys, device)
            self._set(f"context_stats_{n}", stats, device)
            for view, view_counts in enumerate(views):
                self.discounts[n - 1, view] = torch.tensor(_modified_kn_discounts(view_counts))
        self.num_tokens.fill_(int(ids.size))
        return self

    def _set(self, name: str, array: np.ndarray, device: torch.device) -> None:
        self._buffers[name] = torch.from_numpy(np.ascontiguousarray(array)).to(device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Buffer sizes depend on the data: resize the (empty) buffers of an unfitted model to
        # the checkpoint's before the usual shape-checked copy.
        for name, buffer in self._buffers.items():
            incoming = state_dict.get(prefix + name)
            if buffer is not None and incoming is not None and incoming.shape != buffer.shape:
                self._buffers[name] = torch.empty(
                    incoming.shape, dtype=buffer.dtype, device=buffer.device
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # --- scoring ----------------------------------------------------------------------------

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
        """(B, n−1) sentinels: no history before the first token."""
        return torch.full(
            (batch_size, self.order - 1), self.padding_id, dtype=torch.long, device=device
        )

    def eval_history(self, position: int) -> int:
        """Tokens before `position` that rebuild the state there from init_state: n − 1 (batched_eval)."""
        return min(position, self.order - 1)

    @property
    def eval_min_segment(self) -> int:
        return self.order - 1

    @torch.no_grad()
    def forward(
        self, ids: torch.Tensor, state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, T) → log P(next token = w | ids to t) (B, T, V) and the last n−1 tokens."""
        batch, steps = ids.shape
        if state is None:
            state = self.init_state(batch, ids.device)
        width = self.order - 1
        sequence = torch.cat([state, ids], dim=1)  # (B, n−1+T)
        if width:
            # logits[:, t] predict the token after ids[:, t], so the history window ends at
            # ids[:, t]: windows 1..T of the T+1 windows in the sequence.
            history = sequence.unfold(1, width, 1)[:, 1:].reshape(-1, width)  # (N, n−1)
        else:
            history = sequence.new_zeros(batch * steps, 0)
        # Usable context length: the real tokens at the right end of each history window.
        real = (history != self.padding_id).flip(-1).cumprod(-1)
        top_order = real.sum(-1) + 1  # (N,) highest order each position can use
        probs = self._probabilities(history, top_order)  # (N, V) float64
        log_probs = probs.log().to(torch.float32).view(batch, steps, self.vocab_size)
        return log_probs, sequence[:, sequence.shape[1] - width :]

    def _probabilities(self, history: torch.Tensor, top_order: torch.Tensor) -> torch.Tensor:
        """P(w | history) for every w: (N, V) float64, from order 1 up to each top order."""
        probs = torch.full(
            (history.shape[0], self.vocab_size), 1.0 / self.vocab_size,
            dtype=torch.float64, device=history.device,
        )
        for n in range(1, self.order + 1):
            # add-k uses only the top order; KN builds every order up to it, lowest first.
            mask = (top_order == n) if self.smoothing == "add_k" else (top_order >= n)
            if not mask.any():
                continue
            # Past the first n−1 positions of a text every row takes part: skip the gather.
            rows = slice(None) if mask.all() else mask.nonzero().squeeze(1)
            context = history[rows, history.shape[1] - (n - 1) :]  # (R, n−1)
            if self.smoothing == "add_k":
                probs[rows] = self._add_k(n, context)
            else:
                probs[rows] = self._kneser_ney(n, context, top_order[rows] == n, probs[rows])
        return probs

    def _counts(
        self, n: int, context: torch.Tensor, name: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per context (R, n−1): its stats (R, 8) and each next token's `name` count (R, V)."""
        V = self.vocab_size
        powers = V ** torch.arange(n - 2, -1, -1, device=context.device)
        context_key = (context * powers).sum(-1)  # (R,); 0 for the empty context
        buffers = self._buffers
        stats = _lookup(buffers[f"context_keys_{n}"], buffers[f"context_stats_{n}"], context_key)
        query = context_key.unsqueeze(1) * V + torch.arange(V, device=context.device)  # (R, V)
        return stats, _lookup(buffers[f"keys_{n}"], buffers[f"{name}_{n}"], query)

    def _add_k(self, n: int, context: torch.Tensor) -> torch.Tensor:
        stats, counts = self._counts(n, context, "counts")
        total = stats[:, _RAW, None].to(torch.float64)  # (R, 1)
        return (counts.to(torch.float64) + self.k) / (total + self.k * self.vocab_size)

    def _kneser_ney(
        self, n: int, context: torch.Tensor, is_top: torch.Tensor, lower: torch.Tensor
    ) -> torch.Tensor:
        """Order-n interpolated KN (R, V) over the order n−1 estimate `lower` (R, V)."""
        stats, counts = self._counts(n, context, "counts")
        discounts = self.discounts[n - 1, 0].expand(len(context), 3)  # (R, 3) D1, D2, D3+
        if n < self.order:
            # Below the top order a context is scored by how many distinct tokens preceded
            # each continuation (its continuation counts), not by how often it occurred.
            _, continuation = self._counts(n, context, "continuation")
            top = is_top.unsqueeze(1)
            counts = torch.where(top, counts, continuation)
            stats = torch.where(top, stats[:, _RAW : _RAW + 4], stats[:, _CONT : _CONT + 4])
            discounts = torch.where(top, discounts, self.discounts[n - 1, 1])
        total, n1, n2, n3 = stats[:, :4].to(torch.float64).unbind(1)  # (R,) each
        by_count = torch.cat([discounts.new_zeros(len(context), 1), discounts], 1)  # (R, 4)
        discount = by_count.gather(1, counts.clamp(max=3))  # (R, V): 0, D1, D2 or D3+
        d1, d2, d3 = discounts.unbind(1)
        safe_total = total.clamp(min=1).unsqueeze(1)  # (R, 1)
        backoff = (d1 * n1 + d2 * n2 + d3 * n3).unsqueeze(1) / safe_total  # (R, 1)
        mixed = (counts - discount).clamp(min=0) / safe_total + backoff * lower
        # An unseen context carries no evidence: keep the lower order as it is.
        return torch.where(total.unsqueeze(1) > 0, mixed, lower)


def _lookup(sorted_keys: torch.Tensor, values: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """values[i] where sorted_keys[i] == query, else 0; shape query.shape + values.shape[1:]."""
    if sorted_keys.numel() == 0:
        return values.new_zeros(query.shape + values.shape[1:])
    index = torch.searchsorted(sorted_keys, query).clamp_(max=sorted_keys.numel() - 1)
    found = sorted_keys[index] == query
    found = found.view(found.shape + (1,) * (values.dim() - 1))
    return values[index] * found


def _continuation_counts(keys: np.ndarray, longer_keys: np.ndarray, modulus: int) -> np.ndarray:
    """For each n-gram key, how many distinct tokens precede it: N1+(• g)."""
    # Each distinct (n+1)-gram contributes one left extension to its n-token suffix.
    suffixes, extensions = np.unique(longer_keys % modulus, return_counts=True)
    continuation = np.zeros(keys.shape, dtype=np.int64)
    continuation[np.searchsorted(keys, suffixes)] = extensions
    return continuation


def _context_stats(
    context_keys: np.ndarray, views: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Group the sorted n-grams by context; per view: total, N1, N2, N3+ → (C, 8)."""
    stats = np.zeros((0, 8), dtype=np.int64)
    if context_keys.size == 0:
        return context_keys, stats
    starts = np.flatnonzero(np.r_[True, context_keys[1:] != context_keys[:-1]])
    stats = np.zeros((starts.size, 8), dtype=np.int64)
    for view, counts in enumerate(views):
        for column, values in enumerate((counts, counts == 1, counts == 2, counts >= 3)):
            stats[:, 4 * view + column] = np.add.reduceat(values.astype(np.int64), starts)
    return context_keys[starts], stats


def _modified_kn_discounts(counts: np.ndarray) -> tuple[float, float, float]:
    """Chen & Goodman's D1, D2, D3+ from the counts-of-counts n1..n4."""
    n1, n2, n3, n4 = (int(np.count_nonzero(counts == r)) for r in (1, 2, 3, 4))
    y = n1 / (n1 + 2 * n2) if n1 + 2 * n2 else 0.5
    estimates = (
        1 - 2 * y * n2 / n1 if n1 else y,
        2 - 3 * y * n3 / n2 if n2 else y,
        3 - 4 * y * n4 / n3 if n3 else y,
    )
    # D_r ≤ r keeps every discounted count ≥ 0 (so each distribution sums to 1); the floor
    # keeps some mass for the uniform distribution, so no token gets probability 0.
    return tuple(min(max(d, 0.1), r) for r, d in enumerate(estimates, start=1))
