"""Training precision: fp32, or bf16 autocast where the hardware multiplies bf16 natively.

Only the forward pass runs under autocast: master weights, optimizer state, the loss, gradient
clipping and checkpoints stay fp32, so a checkpoint loads anywhere and resumes on any machine.
`auto` asks torch what the device can do (never the vendor's name): bf16 on CUDA devices that
support it, on CPUs where oneDNN reports native bf16 (AVX512-BF16 or AMX), fp32 elsewhere.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

from charlm.errors import ConfigError

PRECISIONS = ("auto", "bf16", "fp32")


@dataclass(frozen=True)
class Precision:
    name: str  # "bf16" | "fp32": what the forward pass computes in
    reason: str  # one clause for the run's first line: why this precision

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.name == "bf16" else torch.float32

    def autocast(self, device: torch.device):
        """The context the forward pass runs in."""
        if self.name == "fp32":
            return nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)


def cpu_has_native_bf16() -> bool:
    """oneDNN's own check for bf16 instructions (AVX512-BF16, AMX-BF16) on this CPU."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return False


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether `device` computes bf16 natively, and what said so."""
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported(including_emulation=False)
        return ok, f"torch.cuda.is_bf16_supported() is {ok} for {torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        ok = cpu_has_native_bf16()
        return ok, f"oneDNN reports {'native' if ok else 'no native'} bf16 on this CPU"
    return False, f"bf16 is not measured to help on {device.type}"


def resolve_precision(requested: str, device: torch.device | str, amp: bool = True) -> Precision:
    """Turn train.precision (and the older train.amp) into what the run computes in, with why."""
    device = torch.device(device)
    if requested not in PRECISIONS:
        raise ConfigError(f"train.precision: {requested!r} is not one of {', '.join(PRECISIONS)}")
    if requested == "fp32":
        return Precision("fp32", "train.precision is fp32")
    ok, why = native_bf16(device)
    if requested == "bf16":
        if device.type == "cuda" and not ok:
            raise ConfigError(f"train.precision: bf16 is not supported here ({why}); use fp32 or auto")
        if device.type not in ("cpu", "cuda"):
            raise ConfigError(f"train.precision: bf16 autocast is not supported on {device.type}; use fp32 or auto")
        return Precision("bf16", "train.precision is bf16" + ("" if ok else f", although {why}: expect it slow"))
    if not amp:
        return Precision("fp32", "train.amp is false")
    return Precision("bf16" if ok else "fp32", f"auto: {why}")


def check_precision(requested: str) -> None:
    """ConfigError for a precision that is not auto, bf16 or fp32 (before anything is loaded)."""
    if requested not in PRECISIONS:
        raise ConfigError(f"precision: {requested!r} is not one of {', '.join(PRECISIONS)}")


def scoring_precision(requested: str, trained: str = "auto", device: torch.device | str = "cpu",
                      amp: bool = True) -> str:
    """What evaluation computes in: `requested`, where "auto" means as the run trained, on this device.

    A run trained in bf16 is scored in bf16 where this device computes it natively (the
    perplexity moves by ~1e-4 relative, docs/evaluation.md), in fp32 anywhere else.
    """
    check_precision(requested)
    if requested != "auto":
        return requested
    if trained == "fp32" or not amp:
        return "fp32"
    return "bf16" if native_bf16(torch.device(device))[0] else "fp32"


def to_float32(state):
    """A carried state (tensor or nested tuple) in fp32, for the checkpoint: bf16 → fp32 is exact."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.float() if state.is_floating_point() else state
    return tuple(to_float32(s) for s in state)


def state_dtypes(state):
    """The dtypes of a carried state, as strings a checkpoint can hold."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return str(state.dtype).removeprefix("torch.")
    return [state_dtypes(s) for s in state]


def cast_state(state, dtypes):
    """Undo to_float32 with the dtypes recorded beside it, so a resumed run sees the same tensors."""
    if state is None or dtypes is None:
        return state
    if isinstance(state, torch.Tensor):
        return state.to(getattr(torch, dtypes))
    return tuple(cast_state(s, d) for s, d in zip(state, dtypes))


def run_rnn(rnn: torch.nn.RNNBase, inputs: torch.Tensor, state):
    """`rnn(inputs, state)`, kept out of bf16 autocast on CUDA.

    torch's autocast wrapper for cuDNN RNNs (aten/src/ATen/cudnn/AutocastRNN.cpp) casts to fp16
    whatever dtype autocast was asked for, since cuDNN has no bf16 RNN kernels here; fp16
    gradients without loss scaling underflow. Under bf16 the recurrent layers therefore run in
    fp32 on CUDA (cuDNN uses TF32 tensor cores for them by default) and the rest in bf16.
    """
    if inputs.is_cuda and torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") == torch.bfloat16:
        with torch.autocast("cuda", enabled=False):
            return rnn(inputs.float(), to_float32(state))
    return rnn(inputs, state)


@contextmanager
def exact_fp32(device: torch.device | str):
    """IEEE fp32 for cuDNN's recurrent layers inside the block (no TF32), on CUDA only.

    cuDNN runs fp32 RNNs on TF32 tensor cores by default (10-bit mantissa), which moves a
    perplexity by ~1e-3 relative; evaluation and generation switch it off so that a checkpoint
    scores and generates the same on a GPU as on a CPU.
    """
    if torch.device(device).type != "cuda":
        yield
        return
    rnn = getattr(torch.backends.cudnn, "rnn", None)
    if rnn is not None and hasattr(rnn, "fp32_precision"):  # torch >= 2.9
        before = rnn.fp32_precision
        rnn.fp32_precision = "ieee"
        try:
            yield
        finally:
            rnn.fp32_precision = before
        return
    before = torch.backends.cudnn.allow_tf32  # older torch: one flag for cuDNN
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = before
