"""nemo_gammapo: γ-PO preference optimization for NeMo / Megatron-core.

Layers (each importable without the ones above it):

* :mod:`nemo_gammapo.core` — pure torch: rewards, preference losses, the γ solver, the margin queue.
"""

__version__ = "0.1.0"
