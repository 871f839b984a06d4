"""Figures of a γ-PO run: margin distributions, γ and implied label smoothing against margin, curves.

* :mod:`.epsilon` — the per-pair label smoothing ε_i implied by γ_i (paper Theorem 3.1, eq. 14).
* :mod:`.run_data` — a run directory's dumps, metric history and γ0.
* :mod:`.figures` — one function per figure; each writes a PNG and the CSV of what it plots.
* :mod:`.cli` — ``nemo-gammapo plots <run_dir> --out <dir>``.
"""
