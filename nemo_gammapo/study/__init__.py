"""Small-scale label-noise robustness study of γ-PO (``scripts/robustness_study.py``, ``docs/robustness.md``).

* :mod:`.task` — the synthetic task: a known additive reward R(x, y), Bradley–Terry labels, graded ambiguity.
* :mod:`.data` — byte-level tokenisation of pairs (and SFT sequences) into fixed-shape tensors.
* :mod:`.methods` — the compared methods (registry loss + τ or ε) and their base losses.
* :mod:`.trainer` — one seeded single-process run on a tiny megatron-core GPT with the shipped
  :class:`~nemo_gammapo.distributed.GammaPOLoss`, from a per-seed SFT warm start (the DPO reference).
* :mod:`.mechanism` — γ_i − γ0, implied ε_i and flip detection from a run's γ dumps.
* :mod:`.stats` — Spearman ρ, AUROC, precision@K, paired bootstrap intervals.
* :mod:`.tuning` — the tuning stage: rSimPO's / rDPO's ε chosen on tuning seeds disjoint from the evaluation.
* :mod:`.grid` — the tuning stage, then methods × flip rates × seeds, in one or more worker processes.
* :mod:`.report` — summaries, paired differences and the markdown tables.
* :mod:`.figure` — the figures, drawn from the written CSVs.
"""
