"""Architecture table for the models our configs train, and their parameter counts.

The model shape of a real run comes from the ``.nemo`` checkpoint at restore time, so the planner
keeps its own copy of the numbers it needs, taken from each model's published Hugging Face
``config.json`` (named beside each entry). :meth:`ModelShape.total_params` counts every weight of
these decoder-only layouts, norms and biases included; ``tests/test_launch_planner.py`` checks it
against an independent count from the same ``config.json`` numbers and against the published
sizes (within 1%: those are rounded).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    """Decoder-only transformer shape (all sizes in elements, not bytes)."""

    name: str
    hidden: int  # h
    layers: int  # L
    heads: int  # a (query heads)
    kv_heads: int  # g (key/value groups; = heads for plain multi-head attention)
    ffn: int  # F, MLP inner size
    vocab: int  # V
    head_dim: int | None = None  # None: hidden // heads
    gated_mlp: bool = True  # SwiGLU / GeGLU: fc1 produces gate and up (2·F columns)
    tied_embeddings: bool = False  # output layer shares the input embedding
    qkv_bias: bool = False
    norms_per_layer: int = 2

    @property
    def d_head(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def q_dim(self) -> int:
        """Width of the query projection (a·d_head)."""
        return self.heads * self.d_head

    @property
    def kv_dim(self) -> int:
        """Width of each of the key and value projections (g·d_head)."""
        return self.kv_heads * self.d_head

    def layer_params(self) -> int:
        """Parameters of one transformer layer."""
        h = self.hidden
        attn = h * self.q_dim + 2 * h * self.kv_dim + self.q_dim * h
        if self.qkv_bias:
            attn += self.q_dim + 2 * self.kv_dim
        mlp = (3 if self.gated_mlp else 2) * h * self.ffn
        return attn + mlp + self.norms_per_layer * h

    def embedding_params(self) -> int:
        """Parameters of the input embedding (V·h)."""
        return self.vocab * self.hidden

    def output_params(self) -> int:
        """Parameters of the output layer (V·h; the same tensor as the embedding when tied)."""
        return self.vocab * self.hidden

    def total_params(self) -> int:
        """All parameters, counting tied embeddings once."""
        total = self.layers * self.layer_params() + self.embedding_params() + self.hidden  # + final norm
        return total if self.tied_embeddings else total + self.output_params()


MODELS: dict[str, ModelShape] = {
    m.name: m
    for m in (
        # meta-llama/Meta-Llama-3-8B-Instruct/config.json: 8.03 B
        ModelShape("llama3-8b", hidden=4096, layers=32, heads=32, kv_heads=8, ffn=14336, vocab=128256),
        # meta-llama/Meta-Llama-3-70B-Instruct/config.json: 70.55 B
        ModelShape("llama3-70b", hidden=8192, layers=80, heads=64, kv_heads=8, ffn=28672, vocab=128256),
        # mistralai/Mistral-7B-Instruct-v0.2/config.json: 7.24 B
        ModelShape("mistral-7b", hidden=4096, layers=32, heads=32, kv_heads=8, ffn=14336, vocab=32000),
        # Qwen/Qwen2.5-7B-Instruct/config.json (q/k/v biases): 7.62 B
        ModelShape("qwen2.5-7b", hidden=3584, layers=28, heads=28, kv_heads=4, ffn=18944, vocab=152064, qkv_bias=True),
        # Qwen/Qwen2.5-32B-Instruct/config.json (q/k/v biases): 32.76 B (its model card says 32.5 B)
        ModelShape("qwen2.5-32b", hidden=5120, layers=64, heads=40, kv_heads=8, ffn=27648, vocab=152064, qkv_bias=True),
        # google/gemma-2-9b-it/config.json (head_dim 256, tied embeddings, 4 norms per layer): 9.24 B
        ModelShape(
            "gemma2-9b",
            hidden=3584,
            layers=42,
            heads=16,
            kv_heads=8,
            head_dim=256,
            ffn=14336,
            vocab=256000,
            tied_embeddings=True,
            norms_per_layer=4,
        ),
    )
}

# Which shape each conf/*.yaml trains (the config itself only names a .nemo file).
CONFIG_MODELS: dict[str, str] = {
    "llama3_8b_instruct": "llama3-8b",
    "llama3_70b_instruct": "llama3-70b",
    "mistral_7b_instruct": "mistral-7b",
    "qwen25_7b_instruct": "qwen2.5-7b",
    "qwen25_32b_instruct": "qwen2.5-32b",
    "gemma2_9b_it": "gemma2-9b",
}


def get_model(name: str) -> ModelShape:
    """Look a shape up by model name (``llama3-70b``) or config name (``llama3_70b_instruct``)."""
    key = CONFIG_MODELS.get(name, name)
    if key not in MODELS:
        known = ", ".join(sorted(MODELS) + sorted(CONFIG_MODELS))
        raise KeyError(f"unknown model {name!r}; known: {known} (or pass --model)")
    return MODELS[key]
