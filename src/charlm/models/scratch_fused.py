"""rnn_scratch's forward pass without gradients, in torch's own RNN loop instead of a Python one.

The book's loop (charlm/models/rnn_scratch.py) launches an addmm and a tanh from Python at each
step. When nothing will be differentiated (evaluation, validation, scoring), the same equations
h_t = tanh(x_t W_xh + b_h + h_{t-1} W_hh) run in `torch._VF.rnn_tanh`, whose time loop is C++:
W_ih = [W_xh; b_h]^T on the input with a constant 1 appended, W_hh^T, no kernel biases. With one-hot
input the input product is a (B·T, V + 1) · (V + 1, H) matrix product, cheap while V ≤ H; a larger
vocabulary keeps the book's loop.

Measured (AMD EPYC, 2 threads, torch 2.13.0+cpu; B = 64, T = 272, H = 512, V = 28): the bare
recurrence 196k → 300k tokens/s under bf16 autocast, 135k → 143k in fp32; the two agree to 4e-7 in
fp32 and to bf16's resolution (6e-3) in bf16. The whole evaluation of a trained d2l_rnn_scratch:
docs/evaluation.md (`python scripts/bench_eval.py`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def applies(model, ids: torch.Tensor) -> bool:
    """Whether `model(ids)` may take the fused path: no gradient wanted, several steps, a small one-hot input.

    CPU only: that is where it was measured (a GPU has not been lent to check cuDNN's bf16 RNN).
    """
    if torch.is_grad_enabled() or ids.shape[1] < 2 or ids.device.type != "cpu":
        return False
    return model.embedding is not None or model.vocab_size <= model.hidden_size


def forward(model, ids: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same (logits, h) as RNNScratch.forward, computed by torch's tanh-RNN kernel."""
    device_type = ids.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else model.W_hh.dtype
    steps = ids.t()  # (T, B): time-major, so the outputs come out contiguous for the decoder's one product
    if model.embedding is None:
        x = F.one_hot(steps, model.vocab_size).to(dtype)  # (T, B, V): x_t W_xh picks row x_t
    else:
        x = model.embedding(steps).to(dtype)  # (T, B, E)
    # b_h rides in the input product as the weight of a constant 1 (the kernel's per-step bias add
    # costs a copy per step; measured 8 % of the whole evaluation with it).
    x = torch.cat([x, x.new_ones(*x.shape[:2], 1)], 2)
    w_ih = torch.cat([model.W_xh, model.b_h[None]]).t().to(dtype)  # (H, V + 1)
    outputs, h_n = torch._VF.rnn_tanh(x, h.to(dtype)[None], [w_ih, model.W_hh.t().to(dtype)],
                                      False, 1, 0.0, False, False, False)
    return (outputs @ model.W_hq + model.b_q).transpose(0, 1), h_n[0]  # (B, T, V)
