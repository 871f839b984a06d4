"""Evaluation tools: responses of a trained model for benchmark prompts (:mod:`nemo_gammapo.evaluate.generate`).

:mod:`nemo_gammapo.evaluate.generate` is ``nemo-gammapo generate``; docs/evaluate.md walks through
the whole loop (convert, train, export, generate, evaluate).
"""
