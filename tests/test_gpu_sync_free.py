"""On a GPU, the γ path (gather-free loss, queue, solver, metrics) makes no device→host sync."""

import pytest
import torch

pytestmark = pytest.mark.gpu


def test_gamma_loss_path_has_no_host_sync() -> None:
    pytest.importorskip("megatron.core")
    from nemo_gammapo.core import GammaConfig, PreferenceLossConfig
    from nemo_gammapo.distributed import GammaPOLoss

    dev = torch.device("cuda")
    loss = GammaPOLoss(PreferenceLossConfig(name="gamma_simpo"), GammaConfig(queue_capacity=64, solve_size=32))
    logps = -torch.rand(16, device=dev) * 20
    tokens = torch.randint(1, 10, (16,), device=dev).float()
    loss.from_sequence_logprobs(logps, tokens)  # warm-up: allocations, queue moved to the device
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            value, metrics = loss.from_sequence_logprobs(logps.requires_grad_(True), tokens)
            value.backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(value).item() and metrics["queue_fill"].item() > 0
