"""Per-GPU memory estimate of one γ-PO / DPO training layout (bytes; reported in GiB).

Terms, for the busiest pipeline stage (whichever of the first and the last needs more):

* **weights** — ``P_gpu · 2`` B (BF16 parameters, ``megatron_amp_O2``). ``P_gpu`` is the stage's
  share of the parameters: ``ceil(L/PP)`` layers plus the input embedding (first stage) and/or the
  output layer (last stage), every matrix divided by TP.
* **gradients** — ``P_gpu · grad_bytes``: 4 B (FP32 main-grad buffer; Megatron's and apex's
  distributed Adam default) or 2 B (BF16 gradient reduction). Not sharded.
* **optimizer** — FP32 master weights + Adam m and v = ``P_gpu · 12`` B, divided by DP with a
  distributed optimizer (``distributed_fused_adam`` / ``mcore_distributed_optim``), else not.
  (NeMo's ``distributed_fused_adam`` keeps only a 16-bit remainder of the FP32 master weights,
  10 B/param; 12 B is the conservative textbook figure.)
* **activations** — Korthikanti et al., "Reducing Activation Recomputation in Large Transformer
  Models" (2022), generalised to grouped-query attention and gated MLPs. Per layer and per token
  of a micro-batch, in bytes (BF16 = 2 B per element, dropout masks 1 B):
  ``LN inputs 4h + QKV input 2h + Q 2·q + K,V 4·kv + attention output 2h + MLP input 2h
  + MLP intermediates (6F gated | 4F plain) [+ 2h dropout masks]`` plus ``5·a·s`` for the
  attention scores unless flash/fused attention (Transformer Engine) or selective recomputation
  drops them. With sequence parallelism all of it is divided by TP; without it the LN inputs,
  the QKV and MLP inputs and the masks (``8h + masks``) are replicated. Context parallelism
  divides the tokens by CP. Full recomputation keeps only each checkpointed chunk's input
  (``2h`` per token, /TP with SP) plus one chunk being recomputed. A γ-PO/DPO micro-batch holds
  **2 × micro_batch_size** sequences (chosen + rejected). With 1F1B pipelining the first stage
  holds ``min(PP, micro-batches per step)`` micro-batches in flight, the last stage one.
  The last stage also holds the micro-batch's logits: ``6 B · tokens · V/TP`` (BF16 logits plus the
  FP32 log-softmax kept for the backward pass).
* **overhead** — a fixed allowance for the CUDA context, NCCL buffers, Transformer Engine
  workspaces and allocator fragmentation (default 4 GiB).

The **reference policy** of the DPO family is not on the GPU: NeMo-Aligner keeps its weights in
host memory and swaps them into the model's own buffers for the reference forward pass. It costs
host RAM, ``2 · P_gpu`` B per rank (plus the same again for the swap), reported separately.
Reference-free losses (γ-SimPO, SimPO, CPO, ORPO, …) need none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from nemo_gammapo.launch.models import ModelShape

GIB = 1024**3
WEIGHT_BYTES = 2  # BF16 parameters
OPTIMIZER_BYTES = 12  # FP32 master copy + Adam m + Adam v
LOGIT_BYTES = 6  # BF16 logits + FP32 log-softmax kept for backward
DISTRIBUTED_OPTIMIZERS = ("distributed_fused_adam", "mcore_distributed_optim")
RECOMPUTE_GRANULARITIES = (None, "selective", "full")


@dataclass(frozen=True)
class Layout:
    """A parallel layout. ``dp`` is derived: world size / (tp · pp · cp)."""

    tp: int = 1
    pp: int = 1
    cp: int = 1
    dp: int = 1
    sequence_parallel: bool = False

    @property
    def world(self) -> int:
        return self.tp * self.pp * self.cp * self.dp

    def label(self) -> str:
        sp = "+SP" if self.sequence_parallel else ""
        return f"TP{self.tp}{sp} PP{self.pp} CP{self.cp} DP{self.dp}"


@dataclass(frozen=True)
class Training:
    """What a config trains with, independent of the layout (sizes in elements / sequences)."""

    seq_length: int = 2048
    micro_batch_size: int = 1  # preference pairs per micro-batch (2 sequences each)
    global_batch_size: int = 128  # preference pairs per optimizer step
    optimizer: str = "distributed_fused_adam"
    grad_bytes: int = 4  # 4: FP32 grad buffer; 2: BF16 gradient reduction
    recompute_granularity: str | None = "selective"
    recompute_method: str | None = None  # "uniform" | "block" (full recompute only)
    recompute_num_layers: int | None = None
    flash_attention: bool = True  # Transformer Engine fused attention: no s² score tensors
    dropout: bool = False  # True: count the 1-byte dropout masks (Llama/Qwen/Mistral use none)
    needs_reference: bool = False  # DPO family: reference weights held in host memory
    sequences_per_sample: int = 2  # chosen + rejected
    overhead_gib: float = 4.0

    @property
    def distributed_optimizer(self) -> bool:
        return self.optimizer in DISTRIBUTED_OPTIMIZERS


@dataclass
class Estimate:
    """Per-GPU memory of one layout (bytes) and whether it fits."""

    layout: Layout
    weights: float
    grads: float
    optimizer: float
    activations: float
    overhead: float
    host_reference: float  # host RAM per rank for the reference policy (0 if reference-free)
    stage: str  # which pipeline stage is the busiest ("first", "last" or "only")
    gpu_bytes: float
    problems: list[str] = field(default_factory=list)  # why it cannot run (empty: it can)
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer + self.activations + self.overhead

    @property
    def fits(self) -> bool:
        return not self.problems and self.total <= self.gpu_bytes

    def reason(self) -> str:
        """One line: why this layout is rejected, or "" if it fits."""
        if self.problems:
            return "; ".join(self.problems)
        if self.total > self.gpu_bytes:
            return (
                f"needs {self.total / GIB:.1f} GiB per GPU on the {self.stage} stage > {self.gpu_bytes / GIB:.0f} GiB "
                f"(weights {self.weights / GIB:.1f} + grads {self.grads / GIB:.1f} + optimizer "
                f"{self.optimizer / GIB:.1f} + activations {self.activations / GIB:.1f} + overhead "
                f"{self.overhead / GIB:.1f})"
            )
        return ""


def stage_params(model: ModelShape, layout: Layout, stage: str) -> float:
    """Parameters held by one GPU of the given pipeline stage ("first", "last" or "only")."""
    layers = math.ceil(model.layers / layout.pp)
    per_layer = model.layer_params() - model.norms_per_layer * model.hidden
    params = layers * (per_layer / layout.tp + model.norms_per_layer * model.hidden)
    if stage in ("first", "only"):
        params += model.embedding_params() / layout.tp
    if stage in ("last", "only"):
        params += model.hidden  # final norm
        if not model.tied_embeddings or stage == "last":  # PP > 1 keeps a copy of a tied embedding here
            params += model.output_params() / layout.tp
    return params


def layer_activation_bytes_per_token(model: ModelShape, train: Training, layout: Layout) -> float:
    """Activation bytes one layer keeps per token of a micro-batch (no recomputation of the layer)."""
    h, q, kv, f, t = model.hidden, model.q_dim, model.kv_dim, model.ffn, layout.tp
    masks = 2 * h if train.dropout else 0  # attention-output and MLP-output dropout masks, 1 B each
    replicated = 4 * h + 2 * h + 2 * h + masks  # LN inputs, QKV input, MLP input, masks
    mlp_inner = (6 if model.gated_mlp else 4) * f  # gate+up (4F) and activation output (2F) | GeLU in/out
    split = 2 * q + 4 * kv + 2 * h + mlp_inner  # Q, K, V, attention output (input of the out-projection)
    keeps_scores = not train.flash_attention and train.recompute_granularity is None
    if keeps_scores:  # softmax output 2·a·s + dropout mask a·s + dropout output 2·a·s (per token)
        split += 5 * model.heads * (train.seq_length // layout.cp)
    if layout.sequence_parallel:
        return (replicated + split) / t
    return replicated + split / t


def activation_bytes(model: ModelShape, train: Training, layout: Layout, stage: str) -> float:
    """Activation memory (bytes) of the given pipeline stage at the 1F1B peak."""
    tokens = train.sequences_per_sample * train.micro_batch_size * train.seq_length / layout.cp
    layers = math.ceil(model.layers / layout.pp)
    per_layer = tokens * layer_activation_bytes_per_token(model, train, layout)
    if train.recompute_granularity == "full":
        chunk = max(1, train.recompute_num_layers or 1)
        layer_input = tokens * 2 * model.hidden / (layout.tp if layout.sequence_parallel else 1)
        if train.recompute_method == "block":  # the first `chunk` layers recompute, the rest keep everything
            recomputed = min(chunk, layers)
            per_micro_batch = recomputed * layer_input + (layers - recomputed) * per_layer
            transient = per_layer if recomputed else 0.0
        else:  # uniform: every chunk of `chunk` layers keeps only its input
            per_micro_batch = math.ceil(layers / chunk) * layer_input
            transient = min(chunk, layers) * per_layer
    else:
        per_micro_batch = layers * per_layer
        transient = 0.0
    micro_batches = train.global_batch_size // (train.micro_batch_size * layout.dp)
    in_flight = min(layout.pp, max(1, micro_batches)) if stage == "first" else 1
    total = in_flight * per_micro_batch + transient
    if stage in ("last", "only"):
        total += tokens * model.vocab / layout.tp * LOGIT_BYTES
    return total


def layout_problems(model: ModelShape, train: Training, layout: Layout) -> list[str]:
    """Reasons the layout cannot run at all, independent of memory."""
    problems = []
    if model.heads % layout.tp or model.kv_heads % layout.tp:
        problems.append(f"TP={layout.tp} does not divide {model.heads} heads / {model.kv_heads} KV groups")
    if model.layers % layout.pp:
        problems.append(f"PP={layout.pp} does not divide {model.layers} layers")
    if train.seq_length % (2 * layout.cp) and layout.cp > 1:
        problems.append(f"sequence length {train.seq_length} is not divisible by 2·CP={2 * layout.cp}")
    if layout.sequence_parallel and layout.tp == 1:
        problems.append("sequence parallelism needs TP > 1")
    if train.global_batch_size % (train.micro_batch_size * layout.dp):
        problems.append(
            f"global batch {train.global_batch_size} is not a multiple of micro batch {train.micro_batch_size} "
            f"× DP {layout.dp}"
        )
    return problems


def estimate(model: ModelShape, train: Training, layout: Layout, gpu_mem_gib: float) -> Estimate:
    """Per-GPU memory of ``layout`` for ``model`` trained as ``train`` on GPUs of ``gpu_mem_gib`` GiB."""
    stages = ["only"] if layout.pp == 1 else ["first", "last"]
    best: Estimate | None = None
    for stage in stages:
        params = stage_params(model, layout, stage)
        shard = layout.dp if train.distributed_optimizer else 1
        est = Estimate(
            layout=layout,
            weights=params * WEIGHT_BYTES,
            grads=params * train.grad_bytes,
            optimizer=params * OPTIMIZER_BYTES / shard,
            activations=activation_bytes(model, train, layout, stage),
            overhead=train.overhead_gib * GIB,
            host_reference=params * WEIGHT_BYTES if train.needs_reference else 0.0,
            stage=stage,
            gpu_bytes=gpu_mem_gib * GIB,
            problems=layout_problems(model, train, layout),
        )
        if best is None or est.total > best.total:
            best = est
    assert best is not None
    return best
