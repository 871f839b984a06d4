"""Launch and scale: model-shape table, per-GPU memory estimates and the layout planner.

``nemo-gammapo plan`` (:mod:`nemo_gammapo.launch.planner`) is the command-line front end; the
SLURM scripts, Docker helpers and cluster docs live in ``examples/slurm/``, ``docker/`` and
``docs/cluster.md``. Nothing here imports NeMo, megatron-core or torch.
"""
