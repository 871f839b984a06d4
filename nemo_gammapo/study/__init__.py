"""Small-scale label-noise robustness study (a CPU-sized version of the paper's Table 4 / Figure 4).

* :mod:`.data` — byte-level tokenisation of the bundled parity task into fixed-shape tensors.
* :mod:`.trainer` — one seeded single-process training run on a tiny megatron-core GPT with the
  shipped :class:`~nemo_gammapo.distributed.GammaPOLoss`, evaluated on the clean held-out split.
* :mod:`.grid` — the methods × flip rates × seeds grid, its results CSV and mean ± std table.
* :mod:`.figure` — the accuracy-versus-flip-rate figure.
"""
