"""Speed and peak memory of the attention forms and of the harmonizer with each PE.

Two tables, each cell a fresh subprocess (so peak memory is that configuration's own):
  1. attention: one causal attention op, fwd+bwd, (B, H=4, T, D=128), m_f=128:
     chunked linear (FAVOR+ features + chunked prefix sums) vs the explicit reference vs exact SDPA;
  2. model: the paper-size harmonizer (d_model 512, 4 heads, 2 layers, m_f 128) fwd+bwd per PE.
Peak memory: "tensors" = the peak of live tensor bytes during one step, from torch.profiler's
allocation records (CPU) or max_memory_allocated (CUDA); "RSS" = the ru_maxrss growth of the worker
(CPU only; includes allocator slack). Time: best (min) and median of --reps steps after a warm-up;
the min is the less load-sensitive number on a shared machine. On CPU the workers run with
glibc told to keep freed memory (``stripes.device.KEEP_FREED_MEMORY_ENV`` in their environment),
as the workflow's jobs run
(``--no-keep-freed-memory`` measures without it: tensors above glibc's 32 MB mmap limit, e.g.
at T=16384, are then unmapped and faulted in again every step).

  python benchmarks/bench_attention.py --batch 8 --lengths 256,1024,4096,16384
  python benchmarks/bench_attention.py --device cuda --pes nope,ropepool
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

ATTN_KINDS = ("chunked", "reference", "sdpa")
DEFAULT_PES = "nope,rope_c,ropepool,fstripe1,spe,fstripe,s_srpe,sdpa"
PE_CONTEXT = {"s_srpe": "mcp", "fstripe": "chord", "fstripe1": "chord"}  # others: time


def estimate_gb(scope: str, kind: str, b: int, t: int) -> float:
    """Rough peak for the skip decision (the T x T and T x D x N_f terms that blow up)."""
    h, d = 4, 128
    quad = b * h * t * t * 4 / 2**30
    if scope == "attention":
        # SDPA's CPU/CUDA kernels are flash-style (no T x T buffer); the reference is not
        return 4 * quad if kind == "reference" else 0.05 * b * t / 1024
    if kind in ("reference", "s_srpe"):
        return 2 * 4 * quad
    if kind == "fstripe":
        return 2 * 6 * b * h * t * d * 64 * 4 / 2**30
    if kind in ("spe", "fstripe_sff"):
        return 2 * 6 * b * h * t * d * 10 * 4 / 2**30
    return 0.15 * b * t / 1024


def _machine(device: str) -> dict:
    import torch

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "nproc": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "device": device, "python": platform.python_version()}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# ---------------------------------------------------------------------------------------- worker
def _worker(args) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    b, t = args.batch, args.T
    if args.scope == "attention":
        from stripes.attention import FavorFeatureMap, causal_linear_attention, exact_causal_attention

        fm = FavorFeatureMap(128, 128, kernels=args.kernels).train()
        q, k, v = (torch.randn(b, 4, t, 128, device=dev, requires_grad=True) for _ in range(3))

        def step():
            if args.kind == "sdpa":
                y = exact_causal_attention(q, k, v)
            else:
                pq, pk, eps = fm(q, k)
                y = causal_linear_attention(pq, pk, v, eps, args.kind, args.chunk)
            y.sum().backward()
    else:
        from stripes.contexts import get_context
        from stripes.model import build_model
        from stripes.pe import load_registry

        name, cfg = args.kind, {"chunk_size": args.chunk, "kernels": args.kernels}
        registry = None
        if name == "sdpa":
            registry = load_registry(data={"sdpa": {"class": "stripes.pe.nope.ExactNoPE", "kwargs": {},
                                                    "description": "exact", "reference": "-"}})
        elif name == "reference":
            name, cfg["linear_impl"] = "nope", "reference"
        ctx = get_context(PE_CONTEXT.get(name, "time"))
        model = build_model(name, ctx.dim, ctx.regular_grid, cfg, registry=registry).to(dev).train()
        x = torch.randn(b, t, 256, device=dev)
        pos = (torch.arange(t, device=dev).float().expand(b, t)[..., None].expand(b, t, ctx.dim).contiguous()
               if ctx.regular_grid else torch.randint(0, 50, (b, t, ctx.dim), device=dev).float())

        def step():
            model.zero_grad(set_to_none=True)
            model(x, pos).square().mean().backward()

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = []
    for i in range(args.reps + 1):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        if i:
            times.append(time.perf_counter() - t0)
    out = {"time_s": min(times), "median_s": statistics.median(times)}
    if dev.type == "cuda":
        out["peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        out["rss_mb"] = float("nan")
    else:
        out["rss_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base) / 2**20
        out["peak_mb"] = _tensor_peak(step) / 2**20
    return out


def _tensor_peak(step) -> int:
    """Peak live tensor bytes during one step, replaying the profiler's allocation records in time
    order (each op's own allocations at its start, frees as [memory] events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    cur = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        cur += e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage
        peak = max(peak, cur)
    return peak


# ------------------------------------------------------------------------------------ the driver
def _run(scope, kind, t, args) -> dict | str:
    est = estimate_gb(scope, kind, args.batch, t)
    if est > args.mem_limit_gb:
        return f"skipped: estimated {est:.1f} GB > --mem-limit-gb {args.mem_limit_gb}"
    cmd = [sys.executable, __file__, "--worker", "--scope", scope, "--kind", kind, "--T", str(t),
           "--batch", str(args.batch), "--device", args.device, "--reps", str(args.reps),
           "--chunk", str(args.chunk), "--threads", str(args.threads), "--kernels", args.kernels]
    env = dict(os.environ)
    if args.device == "cpu" and not args.no_keep_freed_memory:
        from stripes.device import KEEP_FREED_MEMORY_ENV

        env.update(KEEP_FREED_MEMORY_ENV)  # read by glibc when the worker starts
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired:
        return f"skipped: over --timeout {args.timeout}s"
    if out.returncode:
        return "failed: " + (out.stderr.strip().splitlines() or ["?"])[-1][:80]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _table(title, kinds, lengths, results) -> str:
    lines = [f"\n## {title}", "", "cells: best fwd+bwd time / peak tensor memory (RSS growth)", "", "| kind | " + " | ".join(f"T={t}" for t in lengths) + " |",
             "|---|" + "---|" * len(lengths)]
    notes = []
    for kind in kinds:
        cells = []
        for t in lengths:
            r = results[(kind, t)]
            if isinstance(r, str):
                cells.append("—")
                notes.append(f"{kind} T={t}: {r}")
            else:
                rss = "" if r["rss_mb"] != r["rss_mb"] else f" ({r['rss_mb']:.0f})"
                cells.append(f"{r['time_s'] * 1000:.0f} ms / {r['peak_mb']:.0f} MB{rss}")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [""] + [f"- {n}" for n in notes])


def _checks(attn, model, lengths) -> list[str]:
    out = []

    def get(res, k, t):
        r = res.get((k, t))
        return r if isinstance(r, dict) else None

    a, b = get(attn, "chunked", 1024), get(attn, "chunked", 16384)
    if a and b:
        out.append(f"chunked time T=16384 / T=1024 = {b['time_s'] / a['time_s']:.1f} (target <= 20)")
    a, b = get(attn, "chunked", 4096), get(attn, "reference", 4096)
    if a and b:
        out.append(f"reference / chunked peak memory at T=4096 = {b['peak_mb'] / max(a['peak_mb'], 1e-3):.1f} (target >= 8)")
    for t in lengths:
        a, b = get(model, "ropepool", t), get(model, "nope", t)
        if a and b:
            out.append(f"ropepool / nope model step at T={t} = {a['time_s'] / b['time_s']:.2f} (target <= 1.10)")
    for t in [t for t in lengths if t >= 1024]:
        a, b = get(attn, "chunked", t), get(attn, "sdpa", t)
        if a and b:
            out.append(f"sdpa / chunked attention time at T={t} = {b['time_s'] / a['time_s']:.2f} (target > 1)")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lengths", default="256,1024,4096,16384")
    ap.add_argument("--pes", default=DEFAULT_PES, help="model table rows: registry names, 'sdpa' (exact NoPE), "
                    "'reference' (NoPE with the explicit linear form); empty to skip the table")
    ap.add_argument("--attention", default=",".join(ATTN_KINDS), help="attention table rows; empty to skip")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads in the workers (0 = torch default)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--mem-limit-gb", type=float, default=6.0, help="skip configurations estimated above this")
    ap.add_argument("--timeout", type=int, default=600, help="per configuration, seconds")
    ap.add_argument("--no-keep-freed-memory", action="store_true",
                    help="CPU: leave glibc's malloc settings alone (see stripes.device.KEEP_FREED_MEMORY_ENV)")
    ap.add_argument("--kernels", default="auto", choices=["auto", "reference", "fast"],
                    help="the kernel switch (stripes.kernels)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--scope", default="model", help=argparse.SUPPRESS)
    ap.add_argument("--kind", help=argparse.SUPPRESS)
    ap.add_argument("--T", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args)))
        return 0
    lengths = [int(x) for x in args.lengths.split(",") if x]
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    info = _machine(args.device)
    print("# bench_attention: fwd+bwd step time and peak memory, one fresh subprocess per cell")
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()) + f", batch={args.batch}, chunk={args.chunk}"
          + f", keep freed memory={args.device == 'cpu' and not args.no_keep_freed_memory}")
    results = {}
    for scope, kinds in (("attention", [k for k in args.attention.split(",") if k]),
                         ("model", [k for k in args.pes.split(",") if k])):
        res = {}
        for kind in kinds:
            for t in lengths:
                res[(kind, t)] = _run(scope, kind, t, args)
                print(f"  {scope:9s} {kind:10s} T={t:<6d} {res[(kind, t)]}", file=sys.stderr, flush=True)
        results[scope] = res
        if kinds:
            title = ("attention op (B,4,T,128), m_f=128" if scope == "attention"
                     else "harmonizer step (d_model 512, 4 heads, 2 layers, m_f 128)")
            print(_table(title, kinds, lengths, res), flush=True)
    checks = _checks(results["attention"], results["model"], lengths)
    if checks:
        print("\n## targets\n" + "\n".join(f"- {c}" for c in checks))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
    raise SystemExit(main())
