"""Exact evaluation in B side-by-side segments: warm-up starts, then a self-check that reruns until boundaries agree.

The text's n scored positions are cut into B segments of S positions, scored as one (B, L) batch
instead of one (1, L) stream, so a recurrent model does matrix-matrix products instead of one
matrix-vector product per layer and token. Segment 0 starts from the zero state, like the
sequential pass. Segment b > 0 needs the state the sequential pass has at position b·S:

* a model that can say how much history rebuilds that state exactly (`eval_history(position)`:
  the MLP's and the n-gram's window, the transformer's sliding window) replays that many
  preceding tokens from the zero state;
* any other model (the recurrent ones) replays a warm-up of W preceding tokens from the zero
  state, an estimate, and the pass checks it (Parareal style): after the batched pass, segment
  b−1's end state, built from a long history, is compared with the start state segment b used;
  segments whose start differs by more than the tolerance are scored again from the corrected
  start, and the check repeats. Segment 0 is exact, so after round k the first k boundaries are
  exact and the loop ends within B − 1 rounds, even for a model whose state never forgets.

"Equal to the sequential pass" thus means: every segment's start state is within
`atol + rtol·|x|` (elementwise) of the state the sequential pass reaches there, computed in the
same precision; docs/evaluation.md gives the measured effect on the perplexity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from charlm.models import state_batch_dims

LOGIT_FLOATS = 1 << 22  # floats of (B, L, V) logits per forward call: 16 MB in fp32, whatever V is
MAX_SEGMENTS = 64  # an LSTM 1x512 forward is as efficient at B = 8..128 as it gets on a CPU
WARMUP = 256  # twice what a trained LSTM needed (docs/evaluation.md); the self-check covers the rest
# A step at batch B costs about (STEP_TOKENS + B) tokens' worth (a fixed part: weights read, Python,
# kernel launches); the pass costs (W + n/B)·(STEP_TOKENS + B), least at B = √(STEP_TOKENS·n/W).
STEP_TOKENS = 16
ATOL = RTOL = 1e-4
# bf16 keeps 8 significant bits: one state computed at two batch shapes differs by up to ~1e-2,
# so the check compares bf16 states at that resolution (docs/evaluation.md: what it does to the score).
BF16_TOL = 3e-2
TOLERANCE = {"fp32": (ATOL, RTOL), "bf16": (BF16_TOL, BF16_TOL)}


@dataclass
class Scored:
    """What a batched pass found: summed NLL, per-token NLL and top-k (when asked), the rerun count."""

    nats: float
    per_token: torch.Tensor | None  # (n,) float32 NLL of ids[1:], in order
    top: tuple[torch.Tensor, torch.Tensor] | None  # (n, k) bits and ids of the k likeliest tokens
    segments: int
    reruns: int  # segments scored again because their warm-up start was not exact
    rounds: int
    end_state: object = None  # the state after the last position


class EvaluationStopped(Exception):
    """An evaluation was asked to stop before the end of its text."""


def check_stop(stop) -> None:
    """Between chunks: end the pass when `stop` (a threading.Event, or None) is set."""
    if stop is not None and stop.is_set():
        raise EvaluationStopped("evaluation stopped on request")


def tokens_per_call(vocab_size: int, logit_floats: int = LOGIT_FLOATS) -> int:
    """How many positions one forward call may score so its (B, L, V) logits stay within logit_floats."""
    return max(1, logit_floats // max(1, vocab_size))


def plan(model, n: int, vocab_size: int, segments: int | None = None, warmup: int | None = None,
         logit_floats: int = LOGIT_FLOATS, head: bool = False) -> tuple[int, int, int, int]:
    """(H, B, S, W): a head of H positions scored alone, then B segments of S positions, W tokens of history each.

    The head exists only for a model whose zero state has another shape than its warmed state
    (the transformer's empty window): it is scored first, at B = 1, up to the first boundary in phase.
    """
    budget = tokens_per_call(vocab_size, logit_floats)
    exact = getattr(model, "eval_history", None)
    if exact is None:
        W = WARMUP if warmup is None else warmup
        B = segments or max(1, min(MAX_SEGMENTS, budget, n // max(1, W), round(math.sqrt(STEP_TOKENS * n / max(1, W)))))
        S = -(-n // B)
        return 0, -(-n // S), S, min(W, S)
    step = getattr(model, "eval_segment_multiple", 1)  # a transformer's slide schedule: boundaries in phase
    floor = getattr(model, "eval_min_segment", 1)
    H = floor + step if head else 0  # a boundary in phase past the first full window
    rest = n - H
    B = segments or max(1, min(MAX_SEGMENTS, budget, rest // max(1, 4 * floor)))
    S = -(-max(-(-rest // B), floor + 1) // step) * step
    if rest <= 0 or (not head and S >= n):
        return 0, 1, n, 0
    return H, -(-rest // S), S, exact(H + S)


def _rows(state, index: torch.Tensor, dims):
    if isinstance(state, torch.Tensor):
        return state.index_select(dims, index)
    return tuple(_rows(s, index, d) for s, d in zip(state, dims))


def _put(state, index: torch.Tensor, value, dims):
    if isinstance(state, torch.Tensor):
        return state.index_copy(dims, index, value)
    return tuple(_put(s, index, v, d) for s, v, d in zip(state, value, dims))


def _cat(states, dims):
    if isinstance(states[0], torch.Tensor):
        return torch.cat(states, dims)
    return tuple(_cat([s[i] for s in states], d) for i, d in enumerate(dims))


def _far(a, b, dims, atol=ATOL, rtol=RTOL) -> torch.Tensor:
    """(B,) True where a row of state a is not within atol + rtol·|b| of the same row of b."""
    if isinstance(a, torch.Tensor):
        if a.shape != b.shape:  # a window of another length: never the same state
            return torch.ones(a.shape[dims], dtype=torch.bool, device=a.device)
        bad = (a.float() - b.float()).abs() > atol + rtol * b.float().abs()
        return bad.movedim(dims, 0).reshape(a.shape[dims], -1).any(1)
    return torch.stack([_far(x, y, d, atol, rtol) for x, y, d in zip(a, b, dims)]).any(0)


class _Segments:
    """B rows of S positions from `offset`: row b scores ids[o + b·S + 1 : o + b·S + S + 1]; the last may be shorter.

    Chunks are read from `ids` as they are needed, so a memory-mapped split is never copied whole.
    """

    def __init__(self, ids, B: int, S: int, device, offset: int = 0, n: int | None = None):
        self.ids, self.B, self.S, self.device = ids, B, S, device
        self.n = len(ids) - 1 if n is None else n
        self.starts = offset + np.arange(B) * S

    def chunk(self, rows: list[int], t: int, L: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Inputs (b, L), targets (b, L) and the mask of real targets (b, L) at positions t .. t+L−1 of `rows`."""
        table = np.zeros((len(rows), L + 1), dtype=np.int64)
        for i, r in enumerate(rows):
            lo = self.starts[r] + t
            piece = np.asarray(self.ids[lo:min(lo + L + 1, self.n + 1, self.starts[r] + self.S + 1)])
            table[i, :len(piece)] = piece
        valid = np.clip(self.n - (self.starts[rows] + t), 0, min(L, self.S - t))
        x = torch.from_numpy(table).to(self.device)
        mask = (torch.arange(L)[None, :] < torch.from_numpy(valid)[:, None]).to(self.device)
        return x[:, :-1], x[:, 1:], mask

    def warm(self, model, W: int, budget: int, first_state=None):
        """Start states: row b's is the state after its W preceding ids, run from the zero state."""
        state = model.init_state(self.B, self.device)
        dims = state_batch_dims(model)
        rows = [r for r in range(self.B) if self.starts[r] > 0]
        if first_state is not None and self.starts[0] == 0:
            state = _put(state, torch.tensor([0], device=self.device), first_state, dims)
        if not rows or W == 0:
            return state
        history = torch.stack([torch.from_numpy(np.asarray(self.ids[self.starts[r] - W:self.starts[r]], dtype=np.int64))
                               for r in rows]).to(self.device)  # (b, W)
        warmed = model.init_state(len(rows), self.device)
        L = max(1, budget // len(rows))
        for t in range(0, W, L):
            _, warmed = model(history[:, t:t + L], warmed)
        if len(rows) == self.B:
            return warmed
        return _put(state, torch.tensor(rows, device=self.device), warmed, dims)


def _score_rows(model, seg: _Segments, rows: torch.Tensor, state, budget: int, out: dict, top: int, dims,
                stop=None):
    """Score segments `rows` from `state` in (len(rows), L) chunks; fill out's per-row results; the end state."""
    index = rows.tolist()
    b, L = len(index), max(1, budget // len(index))
    sums = torch.zeros(b, dtype=torch.float64, device=rows.device)
    last = seg.n - seg.starts[-1]  # real positions of the last segment: its end state is taken there
    cuts = sorted(set(range(0, seg.S, L)) | ({last} if last < seg.S and seg.B - 1 in index else set()))
    for t, end in zip(cuts, cuts[1:] + [seg.S]):
        if t == last:
            out["tail"] = _rows(state, torch.tensor([index.index(seg.B - 1)], device=rows.device), dims)
        check_stop(stop)
        x, y, m = seg.chunk(index, t, end - t)
        logits, state = model(x, state)  # (b, l, V)
        nll = F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none")  # (b, l)
        nll = torch.where(m, nll, 0.0)
        sums += nll.double().sum(1)
        if out.get("per_token") is not None:
            out["per_token"][rows, t:end] = nll
        if top:
            bits = -torch.log_softmax(logits.float(), -1) / np.log(2.0)
            best, where = bits.topk(min(top, bits.shape[-1]), dim=-1, largest=False)  # (b, l, k)
            out["top_bits"][rows, t:end], out["top_ids"][rows, t:end] = best, where
    out["sums"][rows] = sums
    return state


def _needs_head(model, device) -> bool:
    """Whether the zero state differs in shape from a warmed one (a window that is not yet full)."""
    if getattr(model, "eval_history", None) is None:
        return False
    zero = model.init_state(1, device)
    _, warmed = model(torch.zeros(1, model.eval_min_segment + 1, dtype=torch.long, device=device), zero)

    def shapes(state):
        return [state.shape] if isinstance(state, torch.Tensor) else [x for s in state for x in shapes(s)]

    return shapes(zero) != shapes(warmed)


def _new_out(B: int, S: int, per_token: bool, k: int, device) -> dict:
    out = {"sums": torch.zeros(B, dtype=torch.float64, device=device),
           "per_token": torch.zeros(B, S, device=device) if per_token else None}
    if k:
        out["top_bits"] = torch.zeros(B, S, k, device=device)
        out["top_ids"] = torch.zeros(B, S, k, dtype=torch.long, device=device)
    return out


def score_batched(model, ids, device, *, vocab_size: int, segments: int | None = None,
                  warmup: int | None = None, per_token: bool = False, top: int = 0,
                  logit_floats: int = LOGIT_FLOATS, first_state=None, stop=None,
                  tolerance: tuple[float, float] = (ATOL, RTOL)) -> Scored:
    """Summed NLL of ids[1:] given their history, as the sequential pass scores it; see the module doc.

    The caller validates ids and puts the model in eval and inference mode. `first_state` starts
    the text from a given state instead of the zero state (a rank's share of a longer text).
    Setting `stop` ends the pass between chunks with EvaluationStopped. `tolerance` is the
    self-check's (atol, rtol): TOLERANCE[precision] of the forward pass.
    """
    if isinstance(ids, torch.Tensor):
        ids = ids.cpu().numpy()
    elif not isinstance(ids, np.ndarray):
        ids = np.asarray(ids, dtype=np.int64)
    n, k = len(ids) - 1, min(top, vocab_size)
    budget = tokens_per_call(vocab_size, logit_floats)
    H, B, S, W = plan(model, n, vocab_size, segments, warmup, logit_floats, _needs_head(model, device))
    dims = state_batch_dims(model)
    parts = []
    if H:  # scored alone from the text's start; its end is the first segment's true start
        hout = _new_out(1, H, per_token, k, device)
        zero = model.init_state(1, device) if first_state is None else first_state
        head_end = _score_rows(model, _Segments(ids, 1, H, device, n=H), torch.zeros(1, dtype=torch.long,
                               device=device), zero, budget, hout, top, dims, stop)
        parts.append(hout)
    seg = _Segments(ids, B, S, device, offset=H)
    start = seg.warm(model, W, budget, first_state)
    out = _new_out(B, S, per_token, k, device)
    parts.append(out)
    rows = torch.arange(B, device=device)
    end = _score_rows(model, seg, rows, start, budget, out, top, dims, stop)
    first = 0 if H else 1  # the first segment whose start is an estimate
    reruns = rounds = 0
    while B > first:
        # Segment b's true start is the end of the segment before it; rerun where the start used was not that.
        before = _rows(end, rows[:-1], dims)
        if H:
            before = _cat([head_end, before], dims)
        used = _rows(start, rows[first:], dims)
        wrong = torch.nonzero(_far(used, before, dims, *tolerance)).flatten()
        if not len(wrong):
            break
        fixed = _rows(before, wrong, dims)
        wrong = wrong + first
        start = _put(start, wrong, fixed, dims)
        end = _put(end, wrong, _score_rows(model, seg, wrong, fixed, budget, out, top, dims, stop), dims)
        reruns, rounds = reruns + len(wrong), rounds + 1
    nats = sum(float(p["sums"].sum()) for p in parts)
    flat = torch.cat([p["per_token"].reshape(-1) for p in parts])[:n] if per_token else None
    top_out = None
    if top:
        top_out = tuple(torch.cat([p[key].reshape(-1, k) for p in parts])[:n] for key in ("top_bits", "top_ids"))
    return Scored(nats, flat, top_out, B + bool(H), reruns, rounds, out.get("tail", _rows(end, rows[-1:], dims)))


def score_share(model, ids, lo: int, stop: int, device, *, vocab_size: int, previous, agree,
                tolerance: tuple[float, float] = (ATOL, RTOL)) -> float:
    """Summed NLL of ids[lo + 1 : stop] as the sequential pass over all of `ids` scores them.

    One process's share of a text that other processes score the rest of, each with the same
    call. A model with an exact history replays it (ids[lo − h : lo]) and drops those positions'
    scores. Any other model starts from a warm-up state; `previous(end_state)`, a collective,
    gives the end state of the share before this one (None for the first), and shares whose
    start differs from it are scored again from it until `agree(flag)` finds none.
    """
    exact = getattr(model, "eval_history", None)
    if exact is not None:
        h = exact(lo)
        scored = score_batched(model, ids[lo - h:stop], device, vocab_size=vocab_size, per_token=True)
        return float(scored.per_token[h:].double().sum())
    dims = state_batch_dims(model)
    first = None
    if lo:
        W = min(WARMUP, lo)
        _, first = model(torch.as_tensor(np.asarray(ids[lo - W:lo], dtype=np.int64), device=device)[None],
                         model.init_state(1, device))
    scored = score_batched(model, ids[lo:stop], device, vocab_size=vocab_size, first_state=first, tolerance=tolerance)
    while True:
        before = previous(scored.end_state)
        wrong = before is not None and bool(_far(first, before, dims, *tolerance).any())
        if not agree(wrong)[0]:
            return scored.nats
        if wrong:
            first = before
            scored = score_batched(model, ids[lo:stop], device, vocab_size=vocab_size, first_state=first,
                                   tolerance=tolerance)
