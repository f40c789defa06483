"""The CUDA path on a real GPU: precision, exact resume, CPU portability, compile, torchrun, NCCL.

Every test marked `cuda` skips where torch sees no CUDA GPU (CI, laptops); scripts/gpu_check.sh
runs them on one. CHARLM_TEST_DEVICE=cpu runs the same bodies on the CPU, which checks the tests'
own logic on a machine without a GPU (the CUDA-only assertions are then skipped inside).
"""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

from charlm.checkpoint import load_checkpoint, load_model, save_checkpoint
from charlm.config import build_config, dump_yaml
from charlm.inference import evaluate_checkpoint, generate_from_checkpoint
from charlm.device.precision import exact_fp32, resolve_precision
from charlm.train import train

DEVICE = os.environ.get("CHARLM_TEST_DEVICE", "cuda")
ON_GPU = DEVICE.startswith("cuda")
cuda = pytest.mark.skipif(ON_GPU and not torch.cuda.is_available(), reason="needs a CUDA GPU")


def tiny(*overrides, name="tiny"):
    raw = {"data": {"corpus": "corpus.txt", "normalize": "letters", "sampling": "sequential", "batch_size": 8,
                    "num_steps": 16},
           "model": {"name": "lstm", "hidden_size": 64, "embedding_dim": 16, "dropout": 0.2},
           "optim": {"lr": 0.01},
           "train": {"max_steps": 16, "eval_every": 8, "log_every": 2, "eval_tokens": 2000, "device": DEVICE}}
    return build_config(raw, list(overrides), name=name)


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir):
    return [r["loss"] for r in rows(run_dir)]


@pytest.fixture
def workdir(tmp_path, monkeypatch, corpus_dir):
    monkeypatch.chdir(tmp_path)
    text = (corpus_dir / "timemachine.txt").read_text(encoding="utf-8")[:40000]
    (tmp_path / "corpus.txt").write_text(text, encoding="utf-8")
    return tmp_path


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_few_steps_on_the_gpu_give_finite_falling_loss_and_fp32_checkpoints(workdir, precision):
    result = train(tiny(f"train.precision={precision}", "train.max_steps=40", "train.log_every=10"),
                   run_dir=precision, handle_signals=False)
    assert result.status == "finished" and result.step == 40
    got = losses(workdir / precision)
    assert all(math.isfinite(v) for v in got) and got[-1] < got[0] - 0.3, got
    assert json.loads((workdir / precision / "summary.json").read_text())["precision"] == precision
    payload = load_checkpoint(workdir / precision / "last.pt")
    assert all(t.dtype == torch.float32 for t in payload["model"].values())  # master weights stay fp32
    if ON_GPU:
        assert len(payload["cuda_rng_ranks"]) == 1


@pytest.mark.cuda
@cuda
def test_bf16_keeps_cudnn_recurrent_layers_out_of_fp16():
    from charlm.models import build_model

    device = torch.device(DEVICE)
    model, _ = build_model("lstm", 30, hidden_size=64, embedding_dim=16)
    model.to(device).train()
    seen = []
    model.rnn.register_forward_hook(lambda module, args, out: seen.append(out[0].dtype))
    ids = torch.randint(30, (4, 12), device=device)
    with resolve_precision("bf16", device).autocast(device):
        logits, state = model(ids)
    assert logits.dtype == torch.bfloat16
    if ON_GPU:  # the guard is for cuDNN; on a CPU the layers take autocast's bf16 as it comes
        assert seen == [torch.float32]
    logits.float().sum().backward()
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in model.parameters())
    if ON_GPU:
        # Why the guard exists: plain bf16 autocast hands cuDNN's RNN to an fp16-only wrapper.
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out, _ = model.rnn(model.embedding(ids))
        if out.dtype != torch.float16:
            pytest.skip(f"this torch runs cuDNN RNNs in {out.dtype} under bf16 autocast: "
                        "charlm.device.precision.run_rnn's fp32 guard may no longer be needed")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_on_the_gpu_continues_as_if_never_stopped(workdir, precision):
    # Tolerance 1e-6 relative on every logged loss. On one GPU the kernels charlm uses are
    # deterministic (one stream; CUBLAS_WORKSPACE_CONFIG is set in conftest.py), so bit-equality
    # is expected; the slack allows for cuBLAS/cuDNN picking another kernel, and so another
    # summation order, in the resumed process. Losing anything that resume must restore --
    # the CUDA generator (the dropout masks), the carried LSTM state, Adam's moments -- moves the
    # losses by far more than that (the control below shows it for the generator). One layer:
    # cuDNN's own between-layer dropout keeps its state inside cuDNN, where no checkpoint reaches.
    cfg = tiny(f"train.precision={precision}")
    train(cfg, run_dir="whole", handle_signals=False)
    train(tiny(f"train.precision={precision}", "train.max_steps=8"), run_dir="split", handle_signals=False)
    shutil.copytree(workdir / "split", workdir / "no_rng")
    train(cfg, run_dir="split", resume=True, handle_signals=False)
    whole, split = losses(workdir / "whole"), losses(workdir / "split")
    assert len(whole) == len(split) == 8
    assert split == pytest.approx(whole, rel=1e-6, abs=0)
    a, b = load_checkpoint("whole/last.pt")["model"], load_checkpoint("split/last.pt")["model"]
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7) for k in a)
    if ON_GPU:
        payload = load_checkpoint("no_rng/last.pt")
        del payload["cuda_rng_ranks"], payload["path"]
        save_checkpoint("no_rng/last.pt", payload)
        train(cfg, run_dir="no_rng", resume=True, handle_signals=False)
        assert losses(workdir / "no_rng")[4:] != pytest.approx(whole[4:], rel=1e-4)


@pytest.mark.cuda
@cuda
def test_a_gpu_checkpoint_scores_and_generates_the_same_on_the_cpu(workdir):
    train(tiny("model.hidden_size=256", "train.max_steps=30"), run_dir="run", handle_signals=False)
    on_gpu, _ = evaluate_checkpoint("run", device=DEVICE)
    on_cpu, _ = evaluate_checkpoint("run", device="cpu")
    assert on_gpu.tokens == on_cpu.tokens
    assert on_gpu.perplexity == pytest.approx(on_cpu.perplexity, rel=1e-4)
    # Tighter, per logit: TF32 (cuDNN's default for fp32 RNNs) would be off by ~1e-3 here.
    model_gpu, model_cpu = load_model("run", device=DEVICE).model, load_model("run", device="cpu").model
    ids = torch.randint(28, (1, 300))
    with torch.inference_mode(), exact_fp32(DEVICE):
        gpu_logits = model_gpu(ids.to(DEVICE))[0].cpu()
    with torch.inference_mode():
        cpu_logits = model_cpu(ids)[0]
    assert (gpu_logits - cpu_logits).abs().max() < 1e-4
    texts = [generate_from_checkpoint("run", prefix="the time", length=200, strategy="greedy", device=d)
             .result.texts[0] for d in (DEVICE, "cpu")]
    assert texts[0] == texts[1] and len(texts[0]) == len("the time") + 200


@pytest.mark.cuda
@cuda
def test_compile_trains_on_the_gpu_like_eager(workdir):
    eager = train(tiny("train.precision=fp32", "model.dropout=0.0"), run_dir="eager", handle_signals=False)
    compiled = train(tiny("train.precision=fp32", "model.dropout=0.0", "train.compile=true"), run_dir="compiled",
                     handle_signals=False)
    assert compiled.step == eager.step == 16
    # Inductor fuses the embedding and decoder differently; the same function to float rounding.
    assert losses(workdir / "compiled") == pytest.approx(losses(workdir / "eager"), rel=1e-3)
    assert load_model("compiled").model.state_dict().keys() == load_model("eager").model.state_dict().keys()


@pytest.mark.cuda
@cuda
def test_one_process_under_torchrun_trains_on_the_gpu(workdir):
    (workdir / "tiny.yaml").write_text(dump_yaml(tiny()), encoding="utf-8")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                           "-m", "charlm", "train", "--config", "tiny.yaml", "--set", "train.out=tr"],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"on {DEVICE}" in done.stdout, done.stdout
    assert load_checkpoint(workdir / "tr" / "last.pt")["step"] == 16
    assert evaluate_checkpoint(workdir / "tr", device="cpu")[0].perplexity < 28


@pytest.mark.cuda
@cuda
def test_the_collectives_charlm_uses_run_over_nccl(workdir, tmp_path):
    # torchrun with one process never starts a process group (nothing to reduce), and NCCL
    # refuses two ranks on one GPU; so one rank joins an NCCL group here and Dist is told it is
    # distributed, which sends every call down its collective path.
    import torch.distributed as torch_dist

    from charlm.training.distributed import Dist
    from charlm.evaluation.evaluate import evaluate_ids
    from charlm.models import build_model

    class OneRankJob(Dist):
        active = True

    device = torch.device(DEVICE if DEVICE != "cuda" else "cuda:0")
    store = torch_dist.FileStore(str(tmp_path / "store"), 1)
    if ON_GPU:
        torch.cuda.set_device(device)
        torch_dist.init_process_group("nccl", store=store, rank=0, world_size=1, device_id=device)
    else:
        torch_dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        assert torch_dist.get_backend() == ("nccl" if ON_GPU else "gloo")
        dist = OneRankJob(rank=0, world_size=1)
        assert dist.mean(torch.tensor(3.0, device=device)).item() == 3.0
        assert dist.agree(True, False) == (True, False) and dist.max_float(2.5) == 2.5
        state = (torch.randn(1, 4, 8, device=device, dtype=torch.bfloat16), torch.randn(1, 4, 8, device=device))
        gathered = dist.gather_state(state, (1, 1))
        assert all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(gathered, state))
        assert all(torch.equal(a, b) for a, b in zip(dist.shard_state(gathered, (1, 1)), gathered))
        assert torch.equal(dist.gather_rng()[0], torch.get_rng_state())
        if ON_GPU:
            assert torch.equal(dist.gather_rng(torch.cuda.get_rng_state(device))[0], torch.cuda.get_rng_state(device))
        assert dist.main_first(lambda: 7) == 7
        model, _ = build_model("lstm", 28, hidden_size=16, embedding_dim=8)
        model.to(device)
        ids = torch.randint(28, (500,)).numpy()
        assert dist.evaluate(model, ids, device) == pytest.approx(evaluate_ids(model, ids, device=device).perplexity,
                                                                  rel=1e-6)
    finally:
        torch_dist.destroy_process_group()


@pytest.mark.cuda
@cuda
def test_a_gpu_that_is_not_there_is_one_line(workdir):
    from charlm.training.distributed import resolve_device
    from charlm.errors import ConfigError

    if not ON_GPU:
        pytest.skip("CUDA device numbering")
    with pytest.raises(ConfigError, match=rf"cuda:{torch.cuda.device_count()} does not exist"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.skipif(not hasattr(torch.backends.cudnn, "rnn") or not hasattr(torch.backends.cudnn.rnn, "fp32_precision"),
                    reason="torch < 2.9 has one TF32 flag for cuDNN")
def test_exact_fp32_turns_tf32_off_for_cudnn_rnns_and_back():
    # Runs without a GPU: the flags live in every torch build.
    before = torch.backends.cudnn.rnn.fp32_precision
    with exact_fp32("cuda"):
        assert torch.backends.cudnn.rnn.fp32_precision == "ieee"
    assert torch.backends.cudnn.rnn.fp32_precision == before
    with exact_fp32("cpu"):
        assert torch.backends.cudnn.rnn.fp32_precision == before  # nothing to change off the GPU
