"""Vocab/context-parallel sequence log-probs and the masked margin gather, on 2 gloo ranks."""

import pytest
import torch
from dist_workers import gather_worker, helper_then_die_worker, logprobs_worker

from nemo_gammapo.distributed.process_groups import run_on_ranks

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def logprob_results():
    return run_on_ranks(logprobs_worker, 2, 180)


@pytest.mark.parametrize("kind", ["tp", "cp"])
def test_parallel_sequence_logprobs_match_full_log_softmax(logprob_results, kind: str) -> None:
    for r in logprob_results:
        got = r[kind]
        torch.testing.assert_close(got["logps"], r["ref_logps"], atol=1e-5, rtol=0)
        torch.testing.assert_close(got["tokens"], r["ref_tokens"])
        torch.testing.assert_close(got["grad"], got["ref_grad"], atol=1e-5, rtol=0)
    assert logprob_results[0]["ref_tokens"][2] == 0  # the fully masked row gives (0, 0)


def test_gather_handles_uneven_and_masked_pairs() -> None:
    results = run_on_ranks(gather_worker, 2, 120)
    for rank, r in enumerate(results):
        assert r["margins"].tolist() == [0.0, 1.0, 2.0, 10.0, 0.0, 0.0]
        assert r["valid"].tolist() == [True, False, True, True, False, False]
        assert r["mine"].tolist() == ([0.0, 1.0, 2.0] if rank == 0 else [10.0])


def test_nothing_a_rank_started_outlives_it(tmp_path) -> None:
    """A rank that dies without its exit handlers (kill -9, os._exit) leaves its spawned helpers
    behind; run_on_ranks ends them with the rank's process group."""
    import os
    import time

    with pytest.raises(RuntimeError, match="exited abnormally"):
        run_on_ranks(helper_then_die_worker, 2, 120, {"out_dir": str(tmp_path)}, init_process_group=False)
    pids = [int((tmp_path / f"helper{r}.pid").read_text()) for r in range(2)]

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in pids), pids
