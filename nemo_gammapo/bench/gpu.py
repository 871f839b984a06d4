"""GPU benchmark of the megatron-core γ-PO path: torch + megatron-core only (no NeMo, TE or apex).

An 8B-shaped GPT (Llama-3-8B widths: hidden 4096, 32 heads, 8 KV groups, FFN 14336, vocab
128256) in BF16 with as many layers as fit, sequence 2048, one preference pair per micro-batch
(2 sequences). Reports tokens/s, model FLOPs utilisation, the γ-SimPO/SimPO step-time ratio
(alternating steps in one process) and checks that the γ path performs no device→host sync
(``torch.cuda.set_sync_debug_mode("error")`` around the loss).

    python -m nemo_gammapo.cli bench gpu                     # on a GPU machine
    python -m nemo_gammapo.cli bench gpu --dry-run           # CPU, tiny shapes, one iteration
    python -m nemo_gammapo.cli bench gpu --peak-tflops 400   # MFU against this peak (a GPU not in the table)
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import replace
from typing import Any

import torch

from nemo_gammapo.launch.models import ModelShape, get_model

# Dense BF16 peak, TFLOP/s, for the MFU denominator, by device name (``bench gpu --peak-tflops`` overrides it).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}


SEQ, DRY_RUN_SEQ = 2048, 32
# Llama-3-8B widths from the planner's model table; the layer count is chosen per GPU.
DRY_RUN_SHAPE = ModelShape(name="dry-run", hidden=64, layers=2, heads=4, kv_heads=2, ffn=128, vocab=256)


def layers_that_fit(shape: ModelShape, seq: int, free_bytes: int, batch_seqs: int) -> int:
    """Layers whose BF16 weights + grads + activations (no recompute) fit in 80% of free memory."""
    per_layer = 4 * shape.layer_params() + 34 * seq * batch_seqs * shape.hidden
    fixed = 4 * (shape.embedding_params() + shape.output_params()) + 4 * batch_seqs * seq * shape.vocab  # fp32 logits
    return max(1, int((0.8 * free_bytes - fixed) // per_layer))


def flops_per_token(shape: ModelShape, seq: int) -> float:
    """Training FLOPs per token: 6·N for the matmuls plus attention scores (12·L·h·s)."""
    return 6 * shape.total_params() + 12 * shape.layers * shape.hidden * seq


def step_numbers(
    times: dict[str, list[float]], shape: ModelShape, seq: int, batch_seqs: int, peak_tflops: float | None
) -> dict[str, float]:
    """Median step times (ms) of γ-SimPO and SimPO, their ratio, γ-SimPO's tokens/s and its MFU.

    ``times`` holds each loss's step seconds; MFU is ``flops_per_token · tokens/s / peak`` and
    NaN without a peak (CPU, or a GPU not in :data:`PEAK_TFLOPS`).
    """
    g, b = statistics.median(times["gamma_simpo"]), statistics.median(times["simpo"])
    tokens_per_s = batch_seqs * seq / g
    return {
        "gamma_step_ms": 1e3 * g,
        "base_step_ms": 1e3 * b,
        "gamma_overhead_ratio": g / b,
        "tokens_per_s": tokens_per_s,
        "mfu": flops_per_token(shape, seq) * tokens_per_s / (peak_tflops * 1e12) if peak_tflops else float("nan"),
    }


def _build(shape: ModelShape, seq: int, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    from megatron.core import parallel_state
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.models.gpt.gpt_model import GPTModel
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from nemo_gammapo.models.tiny_gpt import unfused_transformer_config

    parallel_state.initialize_model_parallel(1, 1)
    model_parallel_cuda_manual_seed(0)
    config = unfused_transformer_config(
        num_layers=shape.layers,
        hidden_size=shape.hidden,
        num_attention_heads=shape.heads,
        num_query_groups=shape.kv_heads,
        ffn_hidden_size=shape.ffn,
        gated_linear_unit=True,
        activation_func=torch.nn.functional.silu,
        bf16=dtype == torch.bfloat16,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        use_cpu_initialization=device.type == "cpu",
    )
    model = GPTModel(
        config=config,
        transformer_layer_spec=get_gpt_layer_local_spec(),
        vocab_size=shape.vocab,
        max_sequence_length=seq,
        position_embedding_type="rope",
        share_embeddings_and_output_weights=False,
    )
    return model.to(device=device, dtype=dtype)


def _losses(device: torch.device) -> dict[str, Any]:
    from nemo_gammapo.core import GammaConfig, PreferenceLossConfig
    from nemo_gammapo.distributed import GammaPOLoss

    losses = {}
    for name in ("gamma_simpo", "simpo"):
        loss = GammaPOLoss(
            PreferenceLossConfig(name=name, beta=2.0, gamma_beta_ratio=0.5), GammaConfig(), device=device
        )
        losses[name] = loss
    return losses


def run(dry_run: bool = False, layers: int = 0, steps: int = 10, peak_tflops: float | None = None) -> dict[str, Any]:
    """Run the benchmark in this process (single rank); returns the measured numbers."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from nemo_gammapo.distributed.process_groups import init_single_process_group

    cuda = torch.cuda.is_available() and not dry_run
    if not cuda:
        from nemo_gammapo.cpu_compat import maybe_apply_cpu_patches

        maybe_apply_cpu_patches()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    shape = DRY_RUN_SHAPE if not cuda else replace(get_model("llama3-8b"), name="llama3-8b-shaped", layers=layers)
    seq = SEQ if cuda else DRY_RUN_SEQ
    steps = 1 if dry_run else steps
    batch_seqs = 2  # one preference pair: chosen + rejected
    init_single_process_group("nccl" if cuda else "gloo")
    if cuda and shape.layers == 0:
        free, _ = torch.cuda.mem_get_info()
        shape = replace(shape, layers=layers_that_fit(shape, seq, free, batch_seqs))
    model = _build(shape, seq, dtype, device)
    losses = _losses(device)

    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, shape.vocab, (batch_seqs, seq), generator=gen).to(device)
    labels = torch.roll(tokens, -1, dims=1)
    loss_mask = torch.zeros(batch_seqs, seq, device=device)
    loss_mask[:, seq // 2 :] = 1.0
    batch = {
        "tokens": tokens,
        "position_ids": torch.arange(seq, device=device).expand(batch_seqs, -1),
        "labels": labels,
        "loss_mask": loss_mask,
    }

    def step(loss_obj: Any, check_sync: bool) -> None:
        model.zero_grad(set_to_none=True)
        inner = loss_obj.loss_func

        def loss_func(b: dict, out: torch.Tensor) -> Any:
            ctx = _sync_debug_error() if check_sync else contextlib.nullcontext()
            with ctx:
                return inner(b, out)

        loss_obj.loss_func = loss_func
        try:
            get_forward_backward_func()(
                forward_step_func=loss_obj.forward_step(),
                data_iterator=iter([batch]),
                model=model,
                num_microbatches=1,
                seq_length=seq,
                micro_batch_size=batch_seqs,
                forward_only=False,
            )
        finally:
            loss_obj.loss_func = inner

    times: dict[str, list[float]] = {name: [] for name in losses}
    for i in range(steps + 1):
        for name, loss_obj in losses.items():
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            step(loss_obj, check_sync=cuda and name == "gamma_simpo" and i > 0)
            if cuda:
                torch.cuda.synchronize()
            if i > 0 or dry_run:
                times[name].append(time.perf_counter() - start)
    result = {
        "device": torch.cuda.get_device_name() if cuda else "cpu (dry run)",
        "dtype": str(dtype).replace("torch.", ""),
        "layers": shape.layers,
        "params_b": shape.total_params() / 1e9,
        "seq": seq,
        **step_numbers(times, shape, seq, batch_seqs, peak_tflops or _peak_tflops()),
        "sync_free_checked": cuda,
    }
    parallel_state.destroy_model_parallel()
    return result


@contextlib.contextmanager
def _sync_debug_error() -> Any:
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(0)


def _peak_tflops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
