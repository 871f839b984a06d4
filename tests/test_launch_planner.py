"""Layout planner: bytes-per-parameter arithmetic, Korthikanti activations, and the scaling configs."""

from __future__ import annotations

import json

import pytest

from nemo_gammapo.launch import planner
from nemo_gammapo.launch.memory import GIB, Layout, Training, estimate, layer_activation_bytes_per_token
from nemo_gammapo.launch.models import CONFIG_MODELS, MODELS, ModelShape, get_model

# Architectures from each model's published Hugging Face ``config.json`` (hidden_size, num_hidden_layers,
# num_attention_heads, num_key_value_heads, head_dim, intermediate_size, vocab_size, tie_word_embeddings,
# Qwen2's attention bias), written out here so the count below is independent of the planner's table.
ARCHITECTURES: dict[str, dict[str, int | bool]] = {
    # meta-llama/Meta-Llama-3-8B(-Instruct)/config.json
    "llama3-8b": dict(hidden=4096, layers=32, heads=32, kv_heads=8, head_dim=128, ffn=14336, vocab=128256),
    # meta-llama/Meta-Llama-3-70B(-Instruct)/config.json
    "llama3-70b": dict(hidden=8192, layers=80, heads=64, kv_heads=8, head_dim=128, ffn=28672, vocab=128256),
    # mistralai/Mistral-7B-Instruct-v0.2/config.json (v0.1 has the same shape)
    "mistral-7b": dict(hidden=4096, layers=32, heads=32, kv_heads=8, head_dim=128, ffn=14336, vocab=32000),
    # google/gemma-2-9b(-it)/config.json: head_dim 256 (≠ hidden/heads), tied embeddings, and four RMSNorms
    # per layer (input, post-attention, pre- and post-feed-forward)
    "gemma2-9b": dict(
        hidden=3584, layers=42, heads=16, kv_heads=8, head_dim=256, ffn=14336, vocab=256000, tied=True, norms=4
    ),
    # Qwen/Qwen2.5-7B(-Instruct)/config.json; Qwen2 has biases on q, k and v
    "qwen2.5-7b": dict(
        hidden=3584, layers=28, heads=28, kv_heads=4, head_dim=128, ffn=18944, vocab=152064, qkv_bias=True
    ),
    # Qwen/Qwen2.5-32B(-Instruct)/config.json
    "qwen2.5-32b": dict(
        hidden=5120, layers=64, heads=40, kv_heads=8, head_dim=128, ffn=27648, vocab=152064, qkv_bias=True
    ),
}

# Published parameter counts, in billions, and where they are published.
PUBLISHED_BILLIONS: dict[str, float] = {
    "llama3-8b": 8.03,  # Hugging Face model page of Meta-Llama-3-8B, safetensors "8.03B params"
    "llama3-70b": 70.6,  # Hugging Face model page of Meta-Llama-3-70B, safetensors "70.6B params"
    "mistral-7b": 7.24,  # Hugging Face model page of Mistral-7B-Instruct-v0.2, safetensors "7.24B params"
    "gemma2-9b": 9.24,  # Hugging Face model page of gemma-2-9b, safetensors "9.24B params"
    "qwen2.5-7b": 7.61,  # Qwen2.5-7B-Instruct model card: "Number of Parameters: 7.61B"
    # Qwen2.5-32B-Instruct model card: "Number of Parameters: 32.5B". The config.json above counts 32.76 B
    # (the Hugging Face page's safetensors total reads "32.8B params"), 0.8% above the card's figure.
    "qwen2.5-32b": 32.5,
}
# The published figures are rounded to three digits (and the 32B card's is rounder still); 1% covers that and
# still catches a wrong layer count, hidden or FFN width, or a tied / untied output layer.
PUBLISHED_REL_TOL = 0.01


def count_params(
    hidden: int,
    layers: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    ffn: int,
    vocab: int,
    tied: bool = False,
    qkv_bias: bool = False,
    norms: int = 2,
) -> int:
    """Parameters of a gated-MLP (SwiGLU / GeGLU) decoder, counted tensor by tensor as Hugging Face stores it."""
    q, kv = heads * head_dim, kv_heads * head_dim
    attention = hidden * q + 2 * hidden * kv + q * hidden  # q_proj, k_proj + v_proj, o_proj
    attention += (q + 2 * kv) if qkv_bias else 0
    mlp = 3 * hidden * ffn  # gate_proj, up_proj, down_proj
    per_layer = attention + mlp + norms * hidden
    embeddings = vocab * hidden * (1 if tied else 2)  # embed_tokens (+ lm_head when untied)
    return layers * per_layer + embeddings + hidden  # + the final norm


def llama3_8b_params() -> int:
    """Llama-3-8B's parameter count from its config.json (for the bytes-per-parameter cases)."""
    return count_params(**ARCHITECTURES["llama3-8b"])


def static_gib(e) -> float:
    return (e.weights + e.grads + e.optimizer) / GIB


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_param_counts_match_published_sizes(name: str) -> None:
    """The planner's table, an independent count from config.json, and the published size all agree."""
    independent = count_params(**ARCHITECTURES[name])
    planner_count = get_model(name).total_params()
    assert planner_count == independent  # same architecture numbers, counted two ways
    published = PUBLISHED_BILLIONS[name] * 1e9
    assert independent == pytest.approx(published, rel=PUBLISHED_REL_TOL)
    assert planner_count == pytest.approx(published, rel=PUBLISHED_REL_TOL)


def test_every_planner_model_has_a_published_size() -> None:
    assert set(MODELS) == set(ARCHITECTURES) == set(PUBLISHED_BILLIONS)
    assert {get_model(config).name for config in CONFIG_MODELS} == set(MODELS)


@pytest.mark.parametrize(
    "optimizer,grad_bytes,dp,bytes_per_param",
    [
        ("fused_adam", 4, 1, 2 + 4 + 4 + 4 + 4),  # BF16 weights, FP32 grads, FP32 master + m + v: 18 B
        ("fused_adam", 2, 1, 2 + 2 + 12),  # BF16 grads: the classic 16 B/param (ZeRO paper, Ψ·16)
        ("distributed_fused_adam", 4, 8, 6 + 12 / 8),  # Megatron distributed optimizer: 6 + 12/d
        ("fused_adam", 4, 8, 18),  # plain Adam is not sharded by DP
    ],
)
def test_known_case_llama3_8b_tp1_full_finetune(optimizer: str, grad_bytes: int, dp: int, bytes_per_param) -> None:
    train = Training(optimizer=optimizer, grad_bytes=grad_bytes)
    est = estimate(get_model("llama3-8b"), train, Layout(tp=1, pp=1, dp=dp), gpu_mem_gib=80)
    expected_gib = llama3_8b_params() * bytes_per_param / GIB
    assert static_gib(est) == pytest.approx(expected_gib, rel=0.05)
    assert est.weights == pytest.approx(2 * llama3_8b_params(), rel=0.001)


GPT = ModelShape("gpt-test", hidden=2048, layers=4, heads=16, kv_heads=16, ffn=4 * 2048, vocab=50000, gated_mlp=False)
S, B = 2048, 1  # sequence length, micro-batch (pairs)


def korthikanti_per_layer(t: int, sp: bool, selective: bool) -> float:
    """Korthikanti et al. 2022, table 2 (bytes per layer for one micro-batch of b sequences)."""
    s, b, h, a = S, 2 * B, GPT.hidden, GPT.heads  # γ-PO: chosen + rejected = 2 sequences per pair
    scores = 0 if selective else 5 * a * s / h
    if sp:
        return s * b * h / t * (34 + scores)
    return s * b * h * (10 + 24 / t + scores / t)


@pytest.mark.parametrize(
    "t,sp,granularity", [(1, False, None), (4, False, None), (4, True, None), (4, True, "selective"), (8, True, None)]
)
def test_activations_match_korthikanti(t: int, sp: bool, granularity: str | None) -> None:
    train = Training(
        seq_length=S, micro_batch_size=B, flash_attention=False, dropout=True, recompute_granularity=granularity
    )
    per_token = layer_activation_bytes_per_token(GPT, train, Layout(tp=t, sequence_parallel=sp))
    assert per_token * S * 2 * B == pytest.approx(korthikanti_per_layer(t, sp, granularity == "selective"), rel=1e-9)


def test_full_recompute_keeps_only_layer_inputs() -> None:
    base = Training(seq_length=S, micro_batch_size=B, recompute_granularity=None)
    full = Training(seq_length=S, micro_batch_size=B, recompute_granularity="full", recompute_method="uniform")
    lay = Layout(tp=1, pp=1, dp=1)
    a_none = estimate(GPT, base, lay, 80).activations
    a_full = estimate(GPT, full, lay, 80).activations
    logits = 6 * S * 2 * B * GPT.vocab
    per_layer = S * 2 * B * layer_activation_bytes_per_token(GPT, base, lay)
    assert a_none == pytest.approx(GPT.layers * per_layer + logits)
    assert a_full == pytest.approx(GPT.layers * S * 2 * B * 2 * GPT.hidden + per_layer + logits)


def test_pipeline_first_stage_holds_pp_micro_batches() -> None:
    model, train = get_model("llama3-70b"), Training()
    one = estimate(model, train, Layout(tp=8, pp=1, dp=1, sequence_parallel=True), 80)
    four = estimate(model, train, Layout(tp=8, pp=4, dp=1, sequence_parallel=True), 80)
    assert four.stage == "first"
    # 1/4 of the layers × 4 micro-batches in flight = the same layer activations; no logits on stage 1
    logits = 6 * 2048 * 2 * model.vocab / 8
    assert four.activations == pytest.approx(one.activations - logits, rel=1e-6)


def test_70b_tp1_pp1_on_80gb_is_rejected_with_a_clear_reason() -> None:
    est = estimate(get_model("llama3-70b"), Training(), Layout(tp=1, pp=1, dp=32), gpu_mem_gib=80)
    assert not est.fits
    reason = est.reason()
    assert "needs" in reason and "> 80 GiB" in reason and "weights 131.4" in reason
    assert est.weights / GIB > 80  # the BF16 weights alone exceed the GPU


def test_structural_problems_are_reported() -> None:
    est = estimate(get_model("qwen2.5-32b"), Training(), Layout(tp=16, pp=3, dp=1), 80)
    assert not est.fits
    assert "TP=16" in est.reason() and "PP=3" in est.reason()


def run_plan(capsys, *argv: str) -> tuple[int, dict]:
    rc = planner.main([*argv, "--json"])
    return rc, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name,nodes", [("llama3_70b_instruct", 4), ("qwen25_32b_instruct", 2)])
def test_scaling_configs_pass_the_planner(capsys, name: str, nodes: int) -> None:
    rc = planner.main(["--config", name, "--gpu-mem-gib", "80", "--check"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "* TP8+SP" in out and "yes" in out
    rc, data = run_plan(capsys, "--config", name, "--gpu-mem-gib", "80")
    conf = data["configured"]
    assert data["cluster"] == {"nodes": nodes, "gpus_per_node": 8, "gpu_mem_gib": 80.0}
    assert conf["fits"] and conf["gib"]["total"] < 80
    assert conf["layout"]["tp"] * conf["layout"]["pp"] * conf["layout"]["dp"] == nodes * 8
    assert conf["gib"]["host_reference_per_rank"] == 0  # γ-SimPO: no reference model


def test_70b_config_at_tp1_pp1_fails_check(capsys) -> None:
    overrides = ["model.tensor_model_parallel_size=1", "model.pipeline_model_parallel_size=1"]
    overrides.append("model.sequence_parallel=false")
    rc = planner.main(["--config", "llama3_70b_instruct", "--check", "--explain", *overrides])
    captured = capsys.readouterr()
    assert rc == 1
    assert "does not fit" in captured.err and "> 80 GiB" in captured.err
    assert "Korthikanti" in captured.out and "12 B × P / DP" in captured.out


def test_dpo_family_reports_host_reference_memory(capsys) -> None:
    rc, data = run_plan(capsys, "--config", "llama3_70b_instruct", "model.dpo.preference_loss=gamma_dpo")
    assert rc == 0
    conf = data["configured"]
    assert conf["gib"]["host_reference_per_rank"] == pytest.approx(conf["gib"]["weights"])


def test_cli_dispatch_and_table(capsys) -> None:
    from nemo_gammapo import cli

    rc = cli.main(["plan", "--config", "llama3_70b_instruct", "--nodes", "8", "--tp", "8", "--pp", "2", "4"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "TP8+SP PP4 CP1 DP2" in out and "TP8+SP PP2 CP1 DP4" in out
    assert "weights" in out and "activ" in out and "fits" in out


@pytest.mark.parametrize("name", ["llama3_8b_instruct", "mistral_7b_instruct", "gemma2_9b_it", "qwen25_7b_instruct"])
def test_paper_presets_pass_the_planner(capsys, name: str) -> None:
    """The one-node 7–9B presets fit 8 × 80 GB GPUs at their configured layout."""
    rc = planner.main(["--config", name, "--nodes", "1", "--gpus-per-node", "8", "--gpu-mem-gib", "80", "--check"])
    assert rc == 0, capsys.readouterr().out
