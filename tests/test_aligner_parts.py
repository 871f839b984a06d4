"""Parts of the NeMo path that a CPU run cannot reach end to end, each against its contract.

Context parallelism needs Transformer Engine attention (GPU only), so the two pieces of our model
class that depend on the CP layout are checked on a real CP2 process group against NeMo-Aligner's
own CP split. The gradient-clip shim and the version adapters are checked directly.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from nemo_gammapo.distributed.process_groups import run_on_ranks


def test_clip_counts_a_pipeline_shared_parameter_once() -> None:
    """The tied embedding / output weight lives on two stages at PP > 1: its norm counts once."""
    from nemo_gammapo.cpu_compat import clip_grad_norm_model_parallel

    own, tied = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    own.grad, tied.grad = torch.tensor([3.0, 4.0]), torch.tensor([3.0, 4.0])
    tied.shared = True  # megatron-core's mark on the last stage's copy of the tied embedding
    norm = clip_grad_norm_model_parallel([own, tied], max_norm=1.0)
    assert norm.item() == pytest.approx(5.0)  # not sqrt(50)
    assert torch.allclose(own.grad, torch.tensor([0.6, 0.8]), atol=1e-6)  # every grad is still clipped
    assert torch.allclose(tied.grad, torch.tensor([0.6, 0.8]), atol=1e-6)


def test_version_adapters_do_not_depend_on_the_device() -> None:
    """On a GPU machine with the same pins (no CPU patches), exactly the adapters whose probe finds
    the mismatch install — the same expectation on every torch (2.13: both; 2.6.0: the loader's)."""
    code = (
        "import torch; torch.cuda.is_available = lambda: True\n"
        "from nemo_gammapo.version_adapters import apply_version_adapters, checkpoint_writer_signature_differs, "
        "default_load_plan_refuses_size_mismatch\n"
        "probes = [checkpoint_writer_signature_differs(), default_load_plan_refuses_size_mismatch()]\n"
        "print(probes, apply_version_adapters())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    probes, installed = out.strip().splitlines()[-1].split("] ", 1)
    writer, loader = (p.strip() == "True" for p in probes.strip("[").split(","))
    expected = [name for name, due in (("checkpoint_writer", writer), ("shape_mismatch_loading", loader)) if due]
    assert installed == str(expected)
    assert loader, "every supported torch (2.6.0 on) refuses size mismatches: the resharding adapter is needed"


def resharding_worker(rank: int, world_size: int, root: str) -> dict[str, Any]:
    """Save a vocabulary-padded tensor at one global size and load it at another (as TP1 → TP2 does)."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing import ShardedTensor

    saved = torch.arange(12, dtype=torch.float32).reshape(6, 2)

    def state(data: torch.Tensor) -> dict[str, Any]:
        return {"emb": ShardedTensor.from_rank_offsets("emb", data, allow_shape_mismatch=True)}

    for name in ("small", "large"):
        Path(root, name).mkdir()
    dist_checkpointing.save(state(saved), f"{root}/small")
    grown = dist_checkpointing.load(state(torch.full((8, 2), 7.0)), f"{root}/small")["emb"]
    dist_checkpointing.save(state(grown), f"{root}/large")
    shrunk = dist_checkpointing.load(state(torch.full((6, 2), 7.0)), f"{root}/large")["emb"]
    return {"saved": saved, "grown": grown, "shrunk": shrunk}


@pytest.mark.distributed
def test_padded_vocabulary_reshards(tmp_path) -> None:
    (result,) = run_on_ranks(resharding_worker, 1, 120, {"root": str(tmp_path)})
    assert torch.equal(result["grown"][:6], result["saved"])
    assert torch.equal(result["grown"][6:], torch.zeros(2, 2))  # new padding rows start at zero
    assert torch.equal(result["shrunk"], result["saved"])


def context_parallel_worker(rank: int, world_size: int) -> dict[str, Any]:
    from megatron.core import parallel_state

    from nemo_gammapo.cpu_compat import maybe_apply_cpu_patches

    maybe_apply_cpu_patches(nemo=True)
    from nemo_aligner.models.nlp.gpt.megatron_gpt_dpo_model import MegatronGPTDPOModel

    from nemo_gammapo.aligner.model import reference_placeholder, writes_pair_dumps

    parallel_state.initialize_model_parallel(context_parallel_size=2)
    try:
        batch = {
            "chosen": torch.zeros(3, 16, dtype=torch.long),
            "rejected": torch.zeros(3, 16, dtype=torch.long),
            "chosen_labels": torch.zeros(3, 16, dtype=torch.long),
            "rejected_labels": torch.zeros(3, 16, dtype=torch.long),
        }
        placeholder = reference_placeholder(batch, parallel_state.get_context_parallel_world_size())
        # NeMo-Aligner's own split of a batch onto this CP rank (it does not use `self`).
        split = MegatronGPTDPOModel.get_batch_on_this_context_parallel_rank(None, dict(batch))
        return {
            "placeholder": tuple(placeholder.shape),
            "cp_share": tuple(split["chosen"].shape),
            "writes_dumps": writes_pair_dumps(),
        }
    finally:
        parallel_state.destroy_model_parallel()


@pytest.mark.distributed
def test_context_parallel_reference_shape_and_one_dump_writer() -> None:
    results = run_on_ranks(context_parallel_worker, 2, 180)
    for r in results:
        rows, seq = r["cp_share"]
        assert seq == 8  # this rank's half of the sequence
        assert r["placeholder"] == (2 * rows, seq)  # chosen + rejected rows, this rank's share
    assert [r["writes_dumps"] for r in results] == [True, False]
