"""What the test suite's rank processes import once, in the fork server (``tests/conftest.py``).

Importing NeMo, NeMo-Aligner, Lightning and megatron-core costs ~17 s per process on the 2-core CI
machine, and the suite starts dozens of rank processes. The server imports them once, in the order
a rank does (the CPU patches first: they must precede NeMo's import), and forks every rank from
there (:func:`nemo_gammapo.distributed.process_groups.preload_rank_modules`). Importing this module
runs nothing else: no threads, no tensors.
"""

from __future__ import annotations

from nemo_gammapo.cpu_compat import maybe_apply_cpu_patches

maybe_apply_cpu_patches(nemo=True)

import nemo_aligner.algorithms.dpo  # noqa: E402
import nemo_aligner.utils.train_script_utils  # noqa: E402,F401
from nemo.core.config import hydra_runner  # noqa: E402,F401

import nemo_gammapo.aligner.model  # noqa: E402,F401
