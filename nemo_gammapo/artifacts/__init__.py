"""What a training run leaves in its run directory, and how to write and read it.

* :mod:`.dumps` — per-pair margin / γ / loss dumps (``gamma_dumps/*.parquet``): schema, writer, reader.
* :mod:`.metrics` — the metric history (``metrics.jsonl``): record format, writer, readers across resumes.

Training (:mod:`nemo_gammapo.aligner`) writes these files and the plots (:mod:`nemo_gammapo.viz`)
read them; this package imports neither, nor NeMo or megatron-core.
"""
