"""NeMo adapter: γ-PO for NeMo-Aligner's DPO model and training loop (thin by design)."""
