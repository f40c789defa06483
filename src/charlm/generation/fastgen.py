"""The generation fast path: one decode step of rnn, gru, lstm and rnn_scratch with little around it.

generate() owns this module; the models keep only their plain, readable forward. Calling
nn.RNN/nn.LSTM for one token pays for its sequence machinery and several Python layers, which at
batch 1 cost more than the arithmetic. A step here is a handful of ATen calls on tensors prepared
once per generate() call from the model's public parameters:

- the first layer's input projection W_ih·x + b is a row of a precomputed (V, G) table, so the
  embedding and its matmul become one index;
- the recurrent weights are kept transposed (or, opt-in, in bf16 or int8 with one scale per row),
  one addmm per layer; the gate arithmetic runs in place on that addmm's output.

In fp32 (the default) the step computes the plain path's equations in fp32, deterministically, so
the same seed gives the same text every run; tests/generation/test_fastgen.py checks that it gives the text of
the model's own forward. Nothing is cached on the model: weights changed between calls are seen.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from charlm.errors import ConfigError
from charlm.models.recurrent import RecurrentLM
from charlm.models.rnn_scratch import RNNScratch

PRECISIONS = ("fp32", "bf16", "int8")
# Above this many elements the (V, G) input table is not built (a word-level vocabulary): the
# step then embeds and projects its token, one addmm more.
MAX_TABLE_ELEMENTS = 1 << 24

Step = Callable[[torch.Tensor], torch.Tensor]  # ids (B,) -> logits (B, V) for the next token
# Up to this many samples, generation on a CPU runs in one thread (see step_threads).
ONE_THREAD_BATCH = 16


@contextmanager
def step_threads(batch_size: int, device: torch.device | str) -> Iterator[None]:
    """One torch thread for a small batch on a CPU, torch's count back afterwards.

    A decode step at batch 1 is dozens of tiny ops (a gpt's is ~25 matrix-vector products, a
    layer norm and attention per layer); each one split over threads ends in a barrier, and when
    the cores are busy with anything else a thread that waits for a descheduled one waits a whole
    time slice. scripts/bench_generate.py measures it: on a busy 2-core machine, 2 threads made
    the shipped gpts and an lstm 12 to 20 times slower than one. The products are memory-bound at this
    size, so one thread loses little on an idle machine. A user's OMP_NUM_THREADS is kept.
    """
    if torch.device(device).type != "cpu" or batch_size > ONE_THREAD_BATCH or "OMP_NUM_THREADS" in os.environ:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def plain_stepper(model: nn.Module, state) -> Step:
    """The model's own forward on (B, 1) with the state carried: the reference for the fast path."""

    def step(ids: torch.Tensor) -> torch.Tensor:
        nonlocal state
        logits, state = model(ids[:, None], state)  # (B, 1, V)
        return logits[:, -1]

    return step


def stepper(model: nn.Module, state, precision: str = "fp32") -> Step:
    """The fastest step there is for `model`, continuing from `state` (the warmed model state)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    build = _fast_builder(model)
    if build is None:
        if precision != "fp32":
            raise ConfigError(f"precision {precision} is for the recurrent step (rnn, gru, lstm, rnn_scratch); "
                              f"{type(model).__name__} generates in fp32")
        return plain_stepper(model, state)
    return build(model, state, precision)


def _fast_builder(model: nn.Module):
    if isinstance(model, RNNScratch):
        return _scratch_stepper
    if isinstance(model, RecurrentLM):
        rnn = model.rnn
        if (rnn.bias and not rnn.bidirectional and not getattr(rnn, "proj_size", 0)
                and rnn.mode in _CELLS and getattr(rnn, "nonlinearity", "tanh") == "tanh"):
            return _recurrent_stepper
    return None


# ---------------------------------------------------------------- products in each precision

def int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) weight → int8 (N, K) and one fp32 scale per row, symmetric: w ≈ q * scale."""
    scale = weight.abs().amax(1).clamp_min(torch.finfo(torch.float32).tiny) / 127.0  # (N,)
    q = torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scale


def linear(weight: torch.Tensor, precision: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """f(base (B, N) fp32, x (B, K) fp32) = base + x @ weightᵀ for an (N, K) weight, output fp32."""
    if precision == "fp32":
        w_t = weight.t().contiguous()  # (K, N): addmm streams it row by row
        return lambda base, x: torch.addmm(base, x, w_t)
    if precision == "bf16":
        w_bf16 = weight.to(torch.bfloat16).contiguous()  # (N, K)
        return lambda base, x: base + torch.nn.functional.linear(x.to(torch.bfloat16), w_bf16)
    q, scale = int8_rows(weight)
    if _int8_kernel_works(q, scale):
        scale = scale.to(torch.bfloat16)
        return lambda base, x: base + torch._weight_int8pack_mm(x.to(torch.bfloat16), q, scale)
    dequantized_t = (q.float() * scale[:, None]).t().contiguous()  # the same rounded weights, in fp32
    return lambda base, x: torch.addmm(base, x, dequantized_t)


def _int8_kernel_works(q: torch.Tensor, scale: torch.Tensor) -> bool:
    """Whether torch's int8 weight-only matmul runs here and gives the dequantized product.

    Asked of torch at run time, on this weight: the CPU kernel exists only in some builds, and in
    torch 2.13 it returns garbage (or crashes) when K is not a multiple of 16, hence the shape check.
    """
    if q.device.type != "cpu" or q.shape[1] % 16 or not hasattr(torch, "_weight_int8pack_mm"):
        return False
    x = torch.linspace(-1, 1, q.shape[1]).to(torch.bfloat16)[None]  # (1, K)
    try:
        got = torch._weight_int8pack_mm(x, q, scale.to(torch.bfloat16)).float()
    except RuntimeError:
        return False
    want = x.float() @ (q.float() * scale[:, None]).t()
    return bool(torch.allclose(got, want, rtol=0.02, atol=0.02 * float(want.abs().max()) + 1e-6))


def _input_table(weight_ih: torch.Tensor, model: RecurrentLM, mean: torch.Tensor | None, bias: torch.Tensor):
    """Rows W_ih·x + bias for every token x: (V, G), or None when too large (see MAX_TABLE_ELEMENTS)."""
    if model.embedding is None:  # one-hot input: row v of W_ihᵀ
        return (weight_ih.t() + bias).contiguous()
    if model.vocab_size * weight_ih.shape[0] > MAX_TABLE_ELEMENTS:
        return None
    return torch.addmm(bias, model.input_rows(mean=mean), weight_ih.t())


# ---------------------------------------------------------------- rnn, gru, lstm

def _gru_cell(x_gates, h_gates, h):
    H = h.shape[1]
    rz = x_gates[:, :2 * H].add_(h_gates[:, :2 * H]).sigmoid_()  # (B, 2H): r, z
    n = torch.addcmul(x_gates[:, 2 * H:], rz[:, :H], h_gates[:, 2 * H:]).tanh_()  # tanh(x_n + r ⊙ (W_hn h + b_hn))
    return torch.addcmul(n, rz[:, H:], h - n)  # (1 − z) ⊙ n + z ⊙ h


def _lstm_cell(gates, c):
    H = c.shape[1]
    gates[:, :2 * H].sigmoid_()  # i, f
    gates[:, 3 * H:].sigmoid_()  # o
    g = gates[:, 2 * H:3 * H].tanh_()
    c = torch.addcmul(gates[:, H:2 * H] * c, gates[:, :H], g)  # f ⊙ c + i ⊙ g
    return gates[:, 3 * H:] * torch.tanh(c), c  # o ⊙ tanh(c)


_CELLS = ("RNN_TANH", "GRU", "LSTM")  # nn.RNNBase.mode of the layers this module steps


def _recurrent_stepper(model: RecurrentLM, state, precision: str) -> Step:
    rnn, mode = model.rnn, model.rnn.mode
    is_lstm, is_gru = mode == "LSTM", mode == "GRU"
    hs = [h.contiguous() for h in (state[0] if is_lstm else state)]  # per layer (B, H)
    cs = [c.contiguous() for c in state[1]] if is_lstm else []
    layers = []
    mean = model.mean_row() if model.embedding is not None else None  # rare tokens' rows lean on it
    for k in range(rnn.num_layers):
        w_ih, w_hh = getattr(rnn, f"weight_ih_l{k}"), getattr(rnn, f"weight_hh_l{k}")
        b_ih, b_hh = getattr(rnn, f"bias_ih_l{k}"), getattr(rnn, f"bias_hh_l{k}")
        # The GRU's new gate multiplies (W_hn h + b_hn) by r, so b_hh stays with the hidden product.
        in_bias, hid_bias = (b_ih, b_hh[None]) if is_gru else (b_ih + b_hh, None)
        table = _input_table(w_ih, model, mean, in_bias) if k == 0 else None
        project = None if table is not None else linear(w_ih, "fp32" if k == 0 else precision)
        layers.append((table, in_bias[None], project, linear(w_hh, precision), hid_bias))
    dec_w_t, dec_b = model.decoder.weight.t().contiguous(), model.decoder.bias  # (H, V), (V,)

    def step(ids: torch.Tensor) -> torch.Tensor:
        x = None
        for k, (table, in_bias, project, recur, hid_bias) in enumerate(layers):
            if x is None:
                if table is not None:
                    x_gates = table.index_select(0, ids)  # (B, G)
                else:
                    x_gates = project(in_bias, model.input_rows(ids, mean))
            else:
                x_gates = project(in_bias, x)
            if is_gru:
                hs[k] = x = _gru_cell(x_gates, recur(hid_bias, hs[k]), hs[k])
            elif is_lstm:
                hs[k], cs[k] = _lstm_cell(recur(x_gates, hs[k]), cs[k])
                x = hs[k]
            else:
                hs[k] = x = recur(x_gates, hs[k]).tanh_()
        return torch.addmm(dec_b, x, dec_w_t)  # (B, V)

    return step


# ---------------------------------------------------------------- rnn_scratch

def _scratch_stepper(model: RNNScratch, state, precision: str) -> Step:
    h = state.contiguous()  # (B, H)
    if model.embedding is None:
        table = model.W_xh + model.b_h  # (V, H): one-hot x picks a row of W_xh
    else:
        table = torch.addmm(model.b_h, model.embedding.weight, model.W_xh)
    recur = linear(model.W_hh.t(), precision)  # h @ W_hh, as an (N, K) weight
    W_hq, b_q = model.W_hq, model.b_q

    def step(ids: torch.Tensor) -> torch.Tensor:
        nonlocal h
        h = recur(table.index_select(0, ids), h).tanh_()  # (B, H)
        return torch.addmm(b_q, h, W_hq)  # (B, V)

    return step
