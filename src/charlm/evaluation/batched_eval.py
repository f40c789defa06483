"""Exact evaluation in B side-by-side segments: warm-up starts, then a self-check that reruns until boundaries agree.

The text's n scored positions are cut into B segments of S positions, scored as one (B, L) batch
instead of one (1, L) stream, so a recurrent model does matrix-matrix products instead of one
matrix-vector product per layer and token. Segment 0 starts from the zero state, like the
sequential pass. Segment b > 0 needs the state the sequential pass has at position b·S:

* a model that can say how much history rebuilds that state exactly (`eval_history(position)`:
  the MLP's and the n-gram's window, the transformer's sliding window) replays that many
  preceding tokens from the zero state;
* any other model (the recurrent ones) starts from an estimate (the zero state, or a warm-up of
  W preceding tokens), and the pass checks it (Parareal style): after the batched pass, segment
  b−1's end state, built from a long history, is compared with the start state segment b used.
  Segments whose start differs by more than the tolerance are scored again from the corrected
  start, but only as far as needed: the rescoring stops at the first checkpoint (every 16
  positions up to 128, then 256, 512, …) where its state is within the tolerance of the state the first pass had there,
  since from that point on both passes compute the same thing. The check repeats; segment 0 is
  exact, so after round k the first k boundaries are exact and the loop ends within B − 1
  rounds, even for a model whose state never forgets.

"Equal to the sequential pass" thus means: every position is scored from a state that either was
computed from the sequential pass's state at the segment's start, or is within `atol + rtol·|x|`
(elementwise) of such a state at a checkpoint before it, in the same precision;
docs/evaluation.md gives the measured effect on the perplexity.
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
# Recurrent segments start from the zero state: the self-check's rescoring of a segment's first
# positions is the warm-up, and it stops as soon as the state has converged (FIRST_CHECKPOINT,
# then every doubling), so it costs what each segment needs instead of a fixed worst case.
WARMUP = 0
FIRST_CHECKPOINT = 16
SHARE_WARMUP = 256  # a torchrun rank's share is scored again whole when its start is off, so it warms up first
CONVERGENCE = 64  # positions a trained character model's rescoring typically needs (docs/evaluation.md)
# A step at batch B costs about (STEP_TOKENS + B) tokens' worth (a fixed part: weights read, Python,
# kernel launches); the pass costs (C + n/B)·(STEP_TOKENS + B) with C the warm-up or rescored
# positions per segment, least at B = √(STEP_TOKENS·n/C).
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
    rescored: int = 0  # positions those reruns scored again


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
        C = max(W, CONVERGENCE)
        B = segments or max(1, min(MAX_SEGMENTS, budget, n // C, round(math.sqrt(STEP_TOKENS * n / C))))
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


def _view(model, state):
    """The state as the self-check compares it: what the model's outputs can depend on (eval_state_view)."""
    view = getattr(model, "eval_state_view", None)
    return state if view is None else view(state)


def _differ(model, a, b, dims, tolerance) -> torch.Tensor:
    """(B,) True where row b of state a does not match state b, compared through the model's view."""
    return _far(_view(model, a), _view(model, b), dims, *tolerance)


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


def _score_range(model, seg: _Segments, rows: torch.Tensor, state, t0: int, t1: int, budget: int, out: dict,
                 top: int, stop=None):
    """Score positions t0 .. t1−1 of segments `rows` from `state` in (len(rows), L) chunks: (state at t1, (b,) sums)."""
    index = rows.tolist()
    L = max(1, budget // len(index))
    sums = torch.zeros(len(index), dtype=torch.float64, device=rows.device)
    for t in range(t0, t1, L):
        end = min(t + L, t1)
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
    return state, sums


def _checkpoints(S: int, last: int, estimated: bool) -> list[int]:
    """Piece boundaries of a segment: 0, the rescoring's checkpoints (when starts are estimates), the text's end, S."""
    marks = {0, S}
    if 0 < last < S:
        marks.add(last)  # the last segment's real end: its state there is the text's end state
    t = FIRST_CHECKPOINT
    while estimated and t < S:  # every 16 positions up to 128, where most segments converge; then doubling
        marks.add(t)
        t = t + FIRST_CHECKPOINT if t < 8 * FIRST_CHECKPOINT else 2 * t
    return sorted(marks)


class _Pass:
    """The scores of B segments kept per piece between checkpoints, and the state at every checkpoint."""

    def __init__(self, model, seg: _Segments, budget: int, out: dict, top: int, dims, stop, estimated: bool):
        self.model, self.seg, self.budget, self.out, self.top, self.dims, self.stop = \
            model, seg, budget, out, top, dims, stop
        self.last = seg.n - seg.starts[-1]  # real positions of the last segment
        self.bounds = _checkpoints(seg.S, self.last, estimated)
        self.pieces = torch.zeros(seg.B, len(self.bounds) - 1, dtype=torch.float64, device=seg.device)
        self.states: list = []  # states[k]: every segment's state at bounds[k]
        self.tail = None  # the last segment's state at its real end
        self.rescored = 0

    def _piece(self, k: int, rows: torch.Tensor, state):
        state, sums = _score_range(self.model, self.seg, rows, state, self.bounds[k], self.bounds[k + 1],
                                   self.budget, self.out, self.top, self.stop)
        self.pieces[rows, k] = sums
        if self.bounds[k + 1] == self.last and int(rows[-1]) == self.seg.B - 1:
            self.tail = _rows(state, torch.tensor([len(rows) - 1], device=rows.device), self.dims)
        return state

    def first(self, start) -> None:
        """Score every segment from its start state."""
        rows = torch.arange(self.seg.B, device=self.seg.device)
        self.states = [start]
        for k in range(len(self.bounds) - 1):
            self.states.append(self._piece(k, rows, self.states[-1]))

    def rescore(self, rows: torch.Tensor, start, tolerance) -> None:
        """Score `rows` again from `start`, each only until its state meets the one the pass had at a checkpoint."""
        self.states[0] = _put(self.states[0], rows, start, self.dims)
        state = start
        for k in range(len(self.bounds) - 1):
            state = self._piece(k, rows, state)
            self.rescored += len(rows) * (self.bounds[k + 1] - self.bounds[k])
            converged = ~_differ(self.model, state, _rows(self.states[k + 1], rows, self.dims), self.dims, tolerance)
            self.states[k + 1] = _put(self.states[k + 1], rows, state, self.dims)
            if k == len(self.bounds) - 2 or bool(converged.all()):
                return
            keep = torch.nonzero(~converged).flatten()
            rows, state = rows[keep], _rows(state, keep, self.dims)

    @property
    def end(self):
        return self.states[-1]


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
    out = {"per_token": torch.zeros(B, S, device=device) if per_token else None}
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
    estimated = getattr(model, "eval_history", None) is None
    parts = []
    if H:  # scored alone from the text's start; its end is the first segment's true start
        head = _Pass(model, _Segments(ids, 1, H, device, n=H), budget, _new_out(1, H, per_token, k, device), top,
                     dims, stop, False)
        head.first(model.init_state(1, device) if first_state is None else first_state)
        parts.append(head)
    seg = _Segments(ids, B, S, device, offset=H)
    run = _Pass(model, seg, budget, _new_out(B, S, per_token, k, device), top, dims, stop, estimated)
    run.first(seg.warm(model, W, budget, first_state))
    parts.append(run)
    first = 0 if H else 1  # the first segment whose start is an estimate
    reruns = rounds = 0
    rows = torch.arange(B, device=device)
    while B > first:
        # Segment b's true start is the end of the segment before it; rescore where the start used was not that.
        before = _rows(run.end, rows[:-1], dims)
        if H:
            before = _cat([head.end, before], dims)
        used = _rows(run.states[0], rows[first:], dims)
        wrong = torch.nonzero(_differ(model, used, before, dims, tolerance)).flatten()
        if not len(wrong):
            break
        run.rescore(wrong + first, _rows(before, wrong, dims), tolerance)
        reruns, rounds = reruns + len(wrong), rounds + 1
    nats = sum(float(p.pieces.sum()) for p in parts)
    flat = torch.cat([p.out["per_token"].reshape(-1) for p in parts])[:n] if per_token else None
    top_out = None
    if top:
        top_out = tuple(torch.cat([p.out[key].reshape(-1, k) for p in parts])[:n] for key in ("top_bits", "top_ids"))
    end_state = run.tail if run.tail is not None else _rows(run.end, rows[-1:], dims)
    return Scored(nats, flat, top_out, B + bool(H), reruns, rounds, end_state, run.rescored)


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
        W = min(SHARE_WARMUP, lo)
        _, first = model(torch.as_tensor(np.asarray(ids[lo - W:lo], dtype=np.int64), device=device)[None],
                         model.init_state(1, device))
    scored = score_batched(model, ids[lo:stop], device, vocab_size=vocab_size, first_state=first, tolerance=tolerance)
    while True:
        before = previous(scored.end_state)
        wrong = before is not None and bool(_differ(model, first, before, dims, tolerance).any())
        if not agree(wrong)[0]:
            return scored.nats
        if wrong:
            first = before
            scored = score_batched(model, ids[lo:stop], device, vocab_size=vocab_size, first_state=first,
                                   tolerance=tolerance)
