"""``nemo-gammapo plan``: per-GPU memory of candidate TP/PP/CP/DP layouts for a training config.

    nemo-gammapo plan --config llama3_70b_instruct --nodes 4 --gpus-per-node 8 --gpu-mem-gib 80
    nemo-gammapo plan --config llama3_70b_instruct --tp 1 --pp 1 --explain      # why TP1/PP1 fails
    nemo-gammapo plan --config llama3_70b_instruct --check                       # exit 1 if it won't fit

The config (``conf/<name>.yaml``, composed with Hydra, ``key=value`` overrides accepted) gives the
configured layout, micro/global batch, sequence length, optimizer, recomputation and loss; the
command line gives the cluster shape. Every estimate is in GiB (2^30 bytes) per GPU; the formulas
are in :mod:`nemo_gammapo.launch.memory` and printed by ``--explain``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterable

from nemo_gammapo.launch.config import compose_config, layout_from_config, training_from_config
from nemo_gammapo.launch.memory import GIB, Estimate, Layout, Training, estimate
from nemo_gammapo.launch.models import MODELS, ModelShape, get_model

EXPLAIN = """\
How the estimate is made (per GPU, busiest pipeline stage; P = parameters on that GPU):
  weights      2 B × P                  BF16 parameters (megatron_amp_O2)
  gradients    {grad} B × P                  {grad_text}
  optimizer    12 B × P / {shard}            FP32 master + Adam m + v{shard_text}
  activations  Korthikanti et al. 2022, per layer per token: LN inputs 4h, QKV and MLP inputs 2h each,
               Q 2·q, K/V 4·kv, attention output 2h, MLP intermediates 6F (gated) | 4F; attention
               scores 5·a·s only without flash attention and without selective recompute; /TP with SP
               (else the 8h of LN/QKV/MLP inputs is replicated); tokens = 2 × micro_batch × seq / CP
               (chosen + rejected); first stage × min(PP, micro-batches) in flight (1F1B); full
               recompute keeps 2h per token per checkpointed chunk; last stage + 6 B × tokens × V / TP
               for logits and log-softmax.
  overhead     {overhead:g} GiB                 CUDA context, NCCL buffers, TE workspace, fragmentation
A layout fits when the sum is at most the GPU memory. This is an estimate (±10–15% in practice):
measure with `nvidia-smi` / torch.cuda.max_memory_allocated() on the first steps before a long run."""


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidate_layouts(
    model: ModelShape,
    world: int,
    gpus_per_node: int,
    tps: Iterable[int] | None = None,
    pps: Iterable[int] | None = None,
    cps: Iterable[int] = (1,),
) -> list[Layout]:
    """TP within a node (divides GPUs per node), PP dividing the layers, CP as given; DP = the rest."""
    tps = list(tps) if tps else [t for t in _divisors(gpus_per_node) if model.heads % t == 0]
    pps = list(pps) if pps else [p for p in _divisors(model.layers) if p <= world]
    layouts = []
    for tp in tps:
        for pp in pps:
            for cp in cps:
                if world % (tp * pp * cp):
                    continue
                dp = world // (tp * pp * cp)
                layouts.append(Layout(tp=tp, pp=pp, cp=cp, dp=dp, sequence_parallel=tp > 1))
    return layouts


def _gib(x: float) -> str:
    return f"{x / GIB:7.1f}"


def format_table(estimates: list[Estimate], configured: Layout | None) -> str:
    """A fixed-width table, fitting layouts first (least memory first), then the rejected ones."""
    header = (
        f"{'':2}{'layout':<24}{'stage':<7}{'weights':>8}{'grads':>8}{'optim':>8}{'activ':>8}{'other':>8}"
        f"{'total':>8}  {'fits':<5}reason"
    )
    lines = [header, "-" * len(header)]
    ordered = sorted(estimates, key=lambda e: (not e.fits, e.total))
    for e in ordered:
        mark = "* " if configured is not None and e.layout == configured else "  "
        lines.append(
            f"{mark}{e.layout.label():<24}{e.stage:<7}{_gib(e.weights)} {_gib(e.grads)} {_gib(e.optimizer)} "
            f"{_gib(e.activations)} {_gib(e.overhead)} {_gib(e.total)}  {'yes' if e.fits else 'NO':<5}{e.reason()}"
        )
    return "\n".join(lines)


def _as_dict(e: Estimate) -> dict:
    return {
        "layout": {"tp": e.layout.tp, "pp": e.layout.pp, "cp": e.layout.cp, "dp": e.layout.dp},
        "sequence_parallel": e.layout.sequence_parallel,
        "stage": e.stage,
        "gib": {
            "weights": e.weights / GIB,
            "grads": e.grads / GIB,
            "optimizer": e.optimizer / GIB,
            "activations": e.activations / GIB,
            "overhead": e.overhead / GIB,
            "total": e.total / GIB,
            "host_reference_per_rank": e.host_reference / GIB,
        },
        "fits": e.fits,
        "reason": e.reason(),
    }


def _number(kind: type, allow_zero: bool = False) -> Callable[[str], int | float]:
    """An argparse ``type``: a finite ``kind`` value > 0 (>= 0 with ``allow_zero``); errors name the flag."""
    bound = ">= 0" if allow_zero else "> 0"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            wanted = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{wanted} is needed (got {text!r})") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(f"must be {bound} (got {text})")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The ``nemo-gammapo plan`` argument parser; every count and size must be > 0 (the overhead >= 0)."""
    count, size = _number(int), _number(float)
    p = argparse.ArgumentParser(prog="nemo-gammapo plan", description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the config, key=value")
    p.add_argument("--config", help="config name in conf/ (e.g. llama3_70b_instruct)")
    p.add_argument("--model", help=f"model shape (default: from the config name); one of {', '.join(MODELS)}")
    p.add_argument("--nodes", type=count, help="nodes (default: the config's trainer.num_nodes)")
    p.add_argument("--gpus-per-node", type=count, help="GPUs per node (default: the config's trainer.devices)")
    p.add_argument("--gpu-mem-gib", type=size, default=80.0, help="memory per GPU in GiB (default 80: A100/H100)")
    p.add_argument("--tp", type=count, nargs="+", help="tensor-parallel sizes to try (default: divisors of GPUs/node)")
    p.add_argument("--pp", type=count, nargs="+", help="pipeline-parallel sizes to try (default: divisors of layers)")
    p.add_argument("--cp", type=count, nargs="+", help="context-parallel sizes to try (default: the config's)")
    p.add_argument(
        "--grad-dtype", choices=("fp32", "bf16"), default="fp32", help="gradient buffer dtype (default fp32)"
    )
    allowance = _number(float, allow_zero=True)
    p.add_argument("--overhead-gib", type=allowance, default=4.0, help="fixed per-GPU allowance (default 4 GiB)")
    p.add_argument("--explain", action="store_true", help="print the formulas and the configured layout's terms")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--check", action="store_true", help="exit 1 if the configured layout does not fit")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the planner; returns the process exit code (0, or 1 with --check and a layout that won't fit)."""
    args = build_parser().parse_args(argv)
    if not args.config and not args.model:
        print("nemo-gammapo plan: give --config (and optionally --model)", file=sys.stderr)
        return 2
    grad_bytes = 4 if args.grad_dtype == "fp32" else 2
    if args.config:
        cfg = compose_config(args.config, args.overrides)
        train = training_from_config(cfg, grad_bytes=grad_bytes, overhead_gib=args.overhead_gib)
        nodes = args.nodes or int(cfg.trainer.num_nodes)
        gpus = args.gpus_per_node or int(cfg.trainer.devices)
        if args.nodes or args.gpus_per_node:
            cfg.trainer.num_nodes, cfg.trainer.devices = nodes, gpus
        try:
            configured = layout_from_config(cfg)
        except ValueError as e:  # the configured TP·PP·CP does not divide this cluster
            print(f"note: configured layout not evaluated: {e}", file=sys.stderr)
            configured = None
        cps = args.cp or [int(cfg.model.get("context_parallel_size") or 1)]
    else:
        train = Training(grad_bytes=grad_bytes, overhead_gib=args.overhead_gib)
        nodes, gpus, configured, cps = args.nodes or 1, args.gpus_per_node or 8, None, args.cp or [1]
    try:
        model = get_model(args.model or args.config)
    except KeyError as e:
        print(f"nemo-gammapo plan: {e.args[0]}", file=sys.stderr)
        return 2
    world = nodes * gpus
    layouts = candidate_layouts(model, world, gpus, args.tp, args.pp, cps)
    explicit = bool(args.tp or args.pp or args.cp)
    if configured is not None and configured not in layouts and not explicit:
        layouts.append(configured)
    estimates = [estimate(model, train, lay, args.gpu_mem_gib) for lay in layouts]
    conf_est = next((e for e in estimates if e.layout == configured), None)

    if args.json:
        out = {
            "model": model.name,
            "params": model.total_params(),
            "cluster": {"nodes": nodes, "gpus_per_node": gpus, "gpu_mem_gib": args.gpu_mem_gib},
            "configured": _as_dict(conf_est) if conf_est else None,
            "candidates": [_as_dict(e) for e in estimates],
        }
        print(json.dumps(out, indent=2))
    else:
        print(
            f"{model.name}: {model.total_params() / 1e9:.2f} B parameters; {nodes} node(s) × {gpus} GPUs × "
            f"{args.gpu_mem_gib:g} GiB; seq {train.seq_length}, micro batch {train.micro_batch_size} pairs "
            f"(= {2 * train.micro_batch_size} sequences), global batch {train.global_batch_size}; optimizer "
            f"{train.optimizer}; recompute {train.recompute_granularity or 'none'}; all sizes GiB per GPU"
        )
        print(format_table(estimates, configured))
        if configured is not None:
            print(f"* = the configured layout ({configured.label()})")
        if train.needs_reference:
            ref = max(e.host_reference for e in estimates) / GIB
            print(
                f"reference policy (DPO family): up to {ref:.1f} GiB of host RAM per rank "
                f"({ref * gpus:.0f} GiB per node), twice that during the weight swap; not on the GPU"
            )
        else:
            print("reference policy: none (reference-free loss)")
        if args.explain:
            shard = "DP" if train.distributed_optimizer else "1"
            print()
            print(
                EXPLAIN.format(
                    grad=grad_bytes,
                    grad_text="FP32 main grads" if grad_bytes == 4 else "BF16 grads",
                    shard=shard,
                    shard_text=" (distributed optimizer: sharded over DP)" if shard == "DP" else " (not sharded)",
                    overhead=args.overhead_gib,
                )
            )
            if conf_est is not None:
                print(f"\nconfigured layout {configured.label()}: {conf_est.total / GIB:.1f} GiB per GPU")
                print("  " + (conf_est.reason() or "fits"))
    if args.check and (conf_est is None or not conf_est.fits):
        reason = conf_est.reason() if conf_est else "the configured layout was not evaluated"
        print(f"nemo-gammapo plan: the configured layout does not fit: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
