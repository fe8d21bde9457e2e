"""Training throughput, peak memory and matmul-peak utilisation of one training step.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_train.py                       # CPU, paper size, 5 PEs
    .venv/bin/python benchmarks/bench_train.py --pes rope_c --steps 3 --bf16-check
    .venv/bin/python benchmarks/bench_train.py --device cuda --train-windows 8500

What it measures, per PE (registry name) at the paper's size (d_model 512, 2 layers, 4 heads,
m_f 128, batch 8, T 1024 unless overridden), each in a fresh subprocess so that peak memory is
per PE:

* ``s/step`` and ``frames/s`` of a full training step (forward, BCE, backward, clipping, Adam)
  in train mode (FAVOR+ redraw every step), median over ``--steps`` timed steps after
  ``--warmup`` untimed ones;
* ``GFLOP/step``: FLOPs of one step counted with ``torch.utils.flop_counter.FlopCounterMode``
  (matmul-type ops: mm, addmm, bmm, baddbmm and their in-place forms, convolution; elementwise ops
  are not counted);
* ``% peak``: achieved GFLOP/s divided by the machine's fp32 matmul peak, measured with a large
  ``torch.matmul`` (n = 4096 on CPU, 8192 on CUDA) on the same threads and device, once in the
  parent and once inside each PE's process just before its timed steps (the higher is used);
  ``% paired`` (the headline) divides each timed step's GFLOP/s by a short fp32 peak probe
  (``--probe-n``, 2048) run right after that step and takes the median, so that a step and the
  peak it is compared with see the same neighbours on a shared machine; ``% best`` is the fastest
  step against the highest peak seen in its process (a conservative best case). With ``--bf16``
  the bf16 matmul peak is measured too and ``% bf16 pk`` compares the autocast step with it (a
  bf16 step against the fp32 peak would flatter it);
* ``peak MB``: process max RSS (CPU) or ``torch.cuda.max_memory_allocated`` (CUDA);
* ``eval s/win``: one eval-mode forward pass per window (what validation and evaluation cost).

On CPU the workers run with glibc told to keep freed memory (``MALLOC_MMAP_MAX_=0``,
``MALLOC_TRIM_THRESHOLD_=2147483647`` in their environment), as the workflow's train and tune
jobs do (see ``stripes.device.KEEP_FREED_MEMORY_ENV``); ``--no-keep-freed-memory`` measures
glibc's default allocator instead. ``--kernels reference|fast|auto`` picks the model's kernel
switch (``stripes.kernels``; default auto) and ``--dtype fp32|bf16`` the step's precision
(bf16 = ``--bf16``, autocast), so a GPU run can compare the plain forms with the kernels:
``--device cuda --pes spe --kernels reference`` then ``--kernels auto`` (batched SPE mix). A step whose loss is not
finite fails the PE's row.

``--bf16-speedup`` also times fp32 and bf16-autocast steps interleaved in each PE's process and
prints the speed-up. ``--bf16-check`` trains ``--bf16-steps`` steps of one PE from the same initial
weights and the same batches in fp32 and under bf16 autocast and prints the max relative
deviation of the loss curves. ``--train-windows N`` (or ``--data-report results/data/report.json``) adds the projected
wall time of one full paper run (15 epochs of N 16-bar windows, 20 validations per epoch over
``--val-windows`` windows).

Inputs are synthetic pianoroll-like binary windows (about 1 % active cells) with context
positions of the right type; speed does not depend on their values.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

DEFAULT_PES = ["nope", "rope_c", "fstripe1", "ropepool", "spe"]
# context of each PE in the benchmark (the papers' typical pairing; speed barely depends on it)
DEFAULT_CONTEXT = {"nope": "time", "spe": "time"}


def _inplace_matmul_flops() -> dict:
    """FLOP formulas for the in-place matmuls that FlopCounterMode does not know (it counts
    ``baddbmm`` but not ``baddbmm_``, which the chunked attention uses). FlopCounterMode calls
    them with the argument shapes."""
    import torch

    def baddbmm_(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
        return 2 * a_shape[0] * a_shape[1] * a_shape[2] * b_shape[2]

    def addmm_(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]

    return {torch.ops.aten.baddbmm_: baddbmm_, torch.ops.aten.addmm_: addmm_}


def _synthetic_batch(b: int, t: int, context: str, seed: int):
    import torch

    from stripes.contexts import get_context

    g = torch.Generator().manual_seed(seed)
    ctx = get_context(context)
    x = (torch.rand(b, t, 256, generator=g) < 0.01).float()
    y = (torch.rand(b, t, 128, generator=g) < 0.02).float()
    if ctx.name == "time":
        pos = torch.arange(t, dtype=torch.float32).view(1, t, 1).expand(b, t, 1).contiguous()
    elif ctx.dim == 12:
        # chord chroma changing every 32 frames
        chords = (torch.rand(b, t // 32 + 1, 12, generator=g) < 0.25).float()
        pos = chords.repeat_interleave(32, dim=1)[:, :t]
    else:
        pos = torch.randint(0, 50, (b, t // 32 + 1, ctx.dim), generator=g).float().repeat_interleave(32, dim=1)[:, :t]
    return x, y, pos


def _model(pe: str, context: str, args):
    from stripes.contexts import get_context
    from stripes.model import build_model

    ctx = get_context(context)
    cfg = {"d_model": args.d_model, "n_layers": args.layers, "n_heads": args.heads, "d_ff": args.d_ff,
           "n_features": args.features, "chunk_size": args.chunk, "kernels": args.kernels}
    return build_model(pe=pe, context_dim=ctx.dim, regular_grid=ctx.regular_grid, model_cfg=cfg)


def matmul_peak(device, n: int | None = None, reps: int = 5, dtype=None) -> float:
    """GFLOP/s of a large square torch.matmul (best of ``reps``), fp32 unless ``dtype``."""
    import torch

    n = n or (8192 if device.type == "cuda" else 4096)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = math.inf
    for _ in range(reps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.matmul(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def worker(args) -> dict:
    """Benchmark one PE in this process; returns the row."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    INPLACE_MATMUL_FLOPS = _inplace_matmul_flops()

    from stripes.device import KEEP_FREED_MEMORY_ENV, select_device

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = select_device(args.device)
    # the parent sets these for the workers unless --no-keep-freed-memory (glibc reads them at start)
    heap_kept = dev.type == "cpu" and all(os.environ.get(k) == v for k, v in KEEP_FREED_MEMORY_ENV.items())
    pe = args.worker
    context = args.context or DEFAULT_CONTEXT.get(pe, "bin")
    torch.manual_seed(0)
    model = _model(pe, context, args).to(dev)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x, y, pos = (t.to(dev) for t in _synthetic_batch(args.batch, args.T, context, 0))

    def step(bf16=args.bf16):
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x, pos)
        loss = F.binary_cross_entropy_with_logits(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.0005)
        opt.step()
        return loss

    for _ in range(args.warmup):
        step()
    _sync(dev)
    # the matmul peak again, in this process right before the timed steps (same threads, same load)
    local_peak = matmul_peak(dev, reps=3)
    local_bf16_peak = matmul_peak(dev, reps=3, dtype=torch.bfloat16) if args.bf16 else None
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, probes = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        _sync(dev)
        times.append(time.perf_counter() - t0)
        # a short fp32 peak probe right after each step: the step and its own peak see the same
        # neighbours on a shared machine, so their ratio is steadier than either number alone
        probes.append(matmul_peak(dev, n=args.probe_n, reps=1))
    speedup = None
    if args.bf16_speedup:
        # fp32 and bf16-autocast steps interleaved, so that both see the same machine
        pair = {False: [], True: []}
        for _ in range(args.steps):
            for bf in (False, True):
                t0 = time.perf_counter()
                step(bf)
                _sync(dev)
                pair[bf].append(time.perf_counter() - t0)
        speedup = statistics.median(pair[False]) / statistics.median(pair[True])
    with FlopCounterMode(display=False, custom_mapping=INPLACE_MATMUL_FLOPS) as fc:
        last_loss = float(step())
    # a fast step that has stopped learning is no result (this caught a NaN in F-StrIPE1 once)
    if not math.isfinite(last_loss):
        raise RuntimeError(f"{pe}: training loss is {last_loss} after {args.warmup + args.steps + 1} steps")
    flops = fc.get_total_flops()
    paired = [flops / 1e9 / t / p for t, p in zip(times, probes)]
    # eval-mode forward per window (validation / evaluation cost)
    model.eval()
    with torch.no_grad():
        model(x[:1], pos[:1])
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(2):
            model(x, pos)
        _sync(dev)
        eval_s_per_win = (time.perf_counter() - t0) / (2 * args.batch)
    if dev.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    s = statistics.median(times)
    return {
        "pe": pe,
        "context": context,
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "s_per_step": s,
        "s_min": min(times),
        "frames_per_s": args.batch * args.T / s,
        "gflop_per_step": flops / 1e9,
        "gflops": flops / 1e9 / s,
        "peak_mb": peak_mb,
        "eval_s_per_window": eval_s_per_win,
        "local_peak_gflops": local_peak,
        "probe_gflops": probes,
        "bf16_speedup": speedup,
        "pct_peak_paired": 100 * statistics.median(paired),
        # conservative: the fastest step against the highest peak seen in this process
        "pct_peak_paired_best": 100 * flops / 1e9 / min(times) / max(probes + [local_peak]),
        "local_bf16_peak_gflops": local_bf16_peak,
        "threads": torch.get_num_threads(),
        "bf16": args.bf16,
        "heap_kept": heap_kept,
        "kernels": args.kernels,
    }


def bf16_check(args) -> dict:
    """Loss curves of fp32 and bf16 autocast from the same init on the same batches."""
    import torch
    import torch.nn.functional as F

    from stripes.device import select_device

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = select_device(args.device)
    pe = args.bf16_pe
    context = args.context or DEFAULT_CONTEXT.get(pe, "bin")
    curves = {}
    for bf16 in (False, True):
        torch.manual_seed(0)
        model = _model(pe, context, args).to(dev)
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        losses = []
        for i in range(args.bf16_steps):
            x, y, pos = (t.to(dev) for t in _synthetic_batch(args.batch, args.bf16_T, context, 100 + i))
            torch.manual_seed(1000 + i)  # same FAVOR+ draw and dropout masks in both runs
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(x, pos)
            loss = F.binary_cross_entropy_with_logits(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        curves["bf16" if bf16 else "fp32"] = losses
    dev_rel = [abs(b - a) / abs(a) for a, b in zip(curves["fp32"], curves["bf16"])]
    return {"pe": pe, "T": args.bf16_T, "steps": args.bf16_steps, "max_rel_dev": max(dev_rel),
            "final_fp32": curves["fp32"][-1], "final_bf16": curves["bf16"][-1], **curves}


def machine_info(device: str) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpu": platform.processor() or "", "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if device != "cpu" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def projected_run(row: dict, train_windows: int, val_windows: int, batch: int, epochs: int = 15,
                  val_per_epoch: int = 20) -> dict:
    steps = epochs * math.ceil(train_windows / batch)
    train_s = steps * row["s_per_step"]
    val_s = epochs * val_per_epoch * val_windows * row["eval_s_per_window"]
    return {"steps": steps, "train_h": train_s / 3600, "val_h": val_s / 3600, "total_h": (train_s + val_s) / 3600}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--pes", default=",".join(DEFAULT_PES), help="comma-separated registry names")
    p.add_argument("--context", default=None, help="context for every PE (default: time for nope/spe, else bin)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--T", type=int, default=1024)
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--d-ff", type=int, default=512)
    p.add_argument("--features", type=int, default=128)
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="timed steps per PE")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per PE")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--no-keep-freed-memory", action="store_true",
                   help="leave glibc's malloc as it is (stripes train keeps freed memory on CPU)")
    p.add_argument("--probe-n", type=int, default=2048, help="size of the per-step fp32 peak probe matmul")
    p.add_argument("--bf16", action="store_true", help="time the steps under bf16 autocast")
    p.add_argument("--dtype", default=None, choices=["fp32", "bf16"], help="bf16: as --bf16")
    p.add_argument("--kernels", default="auto", choices=["auto", "reference", "fast"],
                   help="the model's kernel switch (stripes.kernels)")
    p.add_argument("--bf16-check", action="store_true", help="compare a short fp32 and bf16 loss curve")
    p.add_argument("--bf16-speedup", action="store_true",
                   help="also time fp32 and bf16-autocast steps interleaved and print the speed-up")
    p.add_argument("--bf16-pe", default="rope_c")
    p.add_argument("--bf16-steps", type=int, default=10)
    p.add_argument("--bf16-T", type=int, default=256)
    p.add_argument("--train-windows", type=int, default=None, help="16-bar training windows of a full run")
    p.add_argument("--val-windows", type=int, default=None, help="16-bar validation windows of a full run")
    p.add_argument("--data-report", default=str(ROOT / "results" / "data" / "report.json"))
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.dtype == "bf16":
        args.bf16 = True

    if args.worker:
        print("ROW " + json.dumps(worker(args)), flush=True)
        return 0

    import torch

    from stripes.device import KEEP_FREED_MEMORY_ENV, select_device

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = select_device(args.device)
    info = machine_info(dev.type)
    peak = matmul_peak(dev)
    info["fp32_matmul_peak_gflops"] = peak
    bf16_peak = matmul_peak(dev, dtype=torch.bfloat16) if args.bf16 else None
    if bf16_peak:
        info["bf16_matmul_peak_gflops"] = bf16_peak
    print("machine: " + json.dumps(info))
    print(f"shape: batch {args.batch} x T {args.T}, d_model {args.d_model}, {args.layers} layers, "
          f"{args.heads} heads, m_f {args.features}, chunk {args.chunk}, device {dev}, bf16 {args.bf16}, "
          f"kernels {args.kernels}, "
          f"keep freed memory {dev.type == 'cpu' and not args.no_keep_freed_memory}")
    print(f"fp32 matmul peak: {peak:.1f} GFLOP/s (best of 5, n = {8192 if dev.type == 'cuda' else 4096})")
    if bf16_peak:
        print(f"bf16 matmul peak: {bf16_peak:.1f} GFLOP/s (the --bf16 steps are also compared with it)")
    print("note: a shared machine makes these numbers noisy; rerun for stable figures.\n")

    rows = []
    for pe in [s for s in args.pes.split(",") if s]:
        cmd = [sys.executable, __file__, "--worker", pe, "--device", args.device]
        for k in ("context", "batch", "T", "d_model", "layers", "heads", "d_ff", "features", "chunk", "steps",
                  "warmup", "threads", "probe_n", "kernels"):
            v = getattr(args, k)
            if v is not None:
                cmd += [f"--{k.replace('_', '-')}", str(v)]
        if args.bf16:
            cmd.append("--bf16")
        if args.bf16_speedup:
            cmd.append("--bf16-speedup")
        if args.no_keep_freed_memory:
            cmd.append("--no-keep-freed-memory")
        env = dict(os.environ)
        if not args.no_keep_freed_memory:
            env.update(KEEP_FREED_MEMORY_ENV)
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = next((ln for ln in res.stdout.splitlines() if ln.startswith("ROW ")), None)
        if res.returncode or line is None:
            print(f"{pe}: FAILED\n{res.stderr[-2000:]}")
            continue
        row = json.loads(line[4:])
        # the ratio uses the higher of the two peak measurements (a busy machine lowers both)
        row["peak_used_gflops"] = max(peak, row["local_peak_gflops"])
        row["pct_peak"] = 100 * row["gflops"] / row["peak_used_gflops"]
        if args.bf16:
            row["bf16_peak_used_gflops"] = max(bf16_peak, row["local_bf16_peak_gflops"])
            row["pct_bf16_peak"] = 100 * row["gflops"] / row["bf16_peak_used_gflops"]
        rows.append(row)

    hdr = f"{'pe':<10} {'context':<7} {'params M':>8} {'s/step':>7} {'best s':>7} {'frames/s':>9} {'GFLOP/step':>10} " \
          f"{'GFLOP/s':>8} {'peak GF/s':>9} {'% peak':>7} {'% paired':>8} {'% best':>7} {'peak MB':>8} {'eval s/win':>10}"
    if args.bf16:
        hdr += f" {'% bf16 pk':>9}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        line = (f"{r['pe']:<10} {r['context']:<7} {r['params_M']:>8.2f} {r['s_per_step']:>7.3f} {r['s_min']:>7.3f} "
                f"{r['frames_per_s']:>9.0f} {r['gflop_per_step']:>10.1f} {r['gflops']:>8.1f} {r['peak_used_gflops']:>9.1f} "
                f"{r['pct_peak']:>6.1f}% {r['pct_peak_paired']:>7.1f}% {r['pct_peak_paired_best']:>6.1f}% {r['peak_mb']:>8.0f} "
                f"{r['eval_s_per_window']:>10.3f}")
        if args.bf16:
            line += f" {r['pct_bf16_peak']:>8.1f}%"
        print(line)
    print("\n% peak: GFLOP/step / median s/step / fp32 matmul peak (higher of the parent's and the worker's);"
          "\n% paired: median over steps of (step GFLOP/s / the fp32 peak probed right after that step);"
          " % best: the fastest step / the highest peak seen in its process"
          + ("; % bf16 pk: against the bf16 matmul peak" if args.bf16 else ""))

    if args.bf16_speedup:
        print("\nbf16 autocast speed-up (median fp32 step / median bf16 step, interleaved): "
              + ", ".join(f"{r['pe']} {r['bf16_speedup']:.2f}x" for r in rows))

    out = {"machine": info, "args": {k: v for k, v in vars(args).items() if k != "worker"}, "rows": rows}

    train_w, val_w = args.train_windows, args.val_windows
    rp = Path(args.data_report)
    if (train_w is None or val_w is None) and rp.exists():
        windows = json.loads(rp.read_text()).get("windows", {})
        train_w = train_w or windows.get("train_16")
        val_w = val_w or windows.get("val_16")
    if train_w:
        val_w = val_w or max(1, train_w // 8)
        print(f"\nprojected wall time of one full paper run on {dev.type} (15 epochs of {train_w} training windows, "
              f"batch {args.batch}, 20 validations/epoch over {val_w} windows):")
        out["projection"] = {}
        for r in rows:
            pr = projected_run(r, train_w, val_w, args.batch)
            out["projection"][r["pe"]] = pr
            print(f"  {r['pe']:<10} {pr['steps']} steps: train {pr['train_h']:.2f} h + validation {pr['val_h']:.2f} h"
                  f" = {pr['total_h']:.2f} h")
    elif dev.type == "cuda":
        print("\n(no --train-windows and no data report: pass --train-windows N for the full-run projection)")

    if args.bf16_check:
        chk = bf16_check(args)
        out["bf16_check"] = chk
        print(f"\nbf16 autocast vs fp32 ({chk['pe']}, T {chk['T']}, {chk['steps']} steps, same init and batches): "
              f"max relative loss deviation {100 * chk['max_rel_dev']:.2f} % "
              f"(final loss fp32 {chk['final_fp32']:.4f}, bf16 {chk['final_bf16']:.4f})")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
