"""Does physical compaction turn filter pruning into a real CPU speed-up?

torchvision resnet18 (random weights), input 8x3x224x224, eval mode, 2 threads. 50% of the channels of every
dependency-coupled unit are pruned (`Sparsifier(..., Filter(), context='local', example_inputs=...)`, so the residual
streams lose half their channels too), then `compact` removes them. Printed: MACs before/after (`fastprune.metrics.count_flops`, PyTorch's FlopCounterMode),
the theoretical speed-up (MAC ratio), the measured latency speed-up (medians of alternated dense/compact runs in this
process, `fastprune.metrics.measure_latency`, with the quartiles of the run-by-run speed-ups as a noise gauge) and
measured/theoretical (goal >= 0.92).

Each model is timed in five forms, the same transformation applied to dense and compact alike:
- `eager`: as returned, BatchNorm separate;
- `bn-folded`: `torch.fx.experimental.optimization.fuse` folds every BatchNorm into its convolution;
- `folded+NHWC`: also in channels-last memory format, where oneDNN needs no layout reorders;
- `TorchScript`: `torch.jit.trace` + `freeze` + `optimize_for_inference` (oneDNN layouts, ReLU fused into the conv);
- `inductor`: `torch.compile` with `freezing=True` (BatchNorm, ReLU and residual adds fused into oneDNN convolutions),
  what a deployment that compiles the model runs. Needs a C++ compiler; skipped with the reason when it fails.
MACs count convolutions and linears only; BatchNorm, ReLU, max-pool and the residual adds are memory-bound, shrink only
with the channel count (2x here, not 4x), so they weigh more in the small model and eager latency lags the MAC ratio;
the compiled forms fuse most of them away. The last line profiles the `inductor` form and sums the time spent in the
convolution kernels alone: their speed-up over the MAC ratio bounds what any amount of fusion can reach, because a
convolution with half the channels does a quarter of the MACs but runs oneDNN's kernels at a lower efficiency.
The process CPU time per run is printed too: on a shared, loaded machine it is a steadier measure than the wall clock.

Run: python benchmarks/compact_speed.py [--runs 21] [--threads 2]
(the profiler behind the last line logs a few `USDT ... profiler_start` lines, and on a machine without CUDA a
`gpuGetDeviceCount failed` line, to stderr: harmless)
(on a machine shared with other jobs, prefix OMP_WAIT_POLICY=PASSIVE so that waiting threads do not spin)
"""
import argparse, os, statistics, warnings
import torch, torchvision
from torch.fx.experimental.optimization import fuse
from fastprune.sparsifier import Sparsifier
from fastprune.granularity import Filter
from fastprune.criteria import Magnitude
from fastprune.compact import compact
from fastprune.metrics import count_flops, measure_latency

def torchscript(model, x):
    "trace, freeze and optimise for inference (oneDNN layouts, fused conv+ReLU)"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, x)))

def inductor(model, x):
    "torch.compile with frozen weights, compiled by one call"
    import torch._inductor.config as cfg
    cfg.freezing = True
    compiled = torch.compile(model)
    with torch.no_grad(): compiled(x)
    return compiled

def conv_ms(models, x, rounds=7, per_round=3):
    """Median over alternated profiling rounds of the time spent in convolution kernels (fused post-ops included),
    in ms per forward pass, for each of `models`"""
    from torch.profiler import profile
    out = {k: [] for k in models}
    with torch.no_grad():
        for r in range(rounds):
            for k in (list(models) if r % 2 == 0 else list(models)[::-1]):
                with profile() as prof:
                    for _ in range(per_round): models[k](x)
                out[k].append(sum(e.self_cpu_time_total for e in prof.key_averages() if 'convolution' in e.key) / per_round / 1000)
    return {k: statistics.median(v) for k, v in out.items()}

def main(runs=21, warmup=3, threads=2, bs=8, size=224):
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    x = torch.randn(bs, 3, size, size)
    dense = torchvision.models.resnet18(weights=None).eval()
    masked = torchvision.models.resnet18(weights=None).eval()
    masked.load_state_dict(dense.state_dict())
    sp = Sparsifier(masked, Filter(), Magnitude(), context='local', example_inputs=x[:1])
    sp.prune(0.5); sp.apply_masks()
    small = compact(masked, x[:1]).eval()
    with torch.inference_mode(): err = (small(x[:2]) - masked(x[:2])).abs().max().item()
    m_dense, m_small = count_flops(dense, x).total / 2, count_flops(small, x).total / 2
    theo = m_dense / m_small
    n = lambda m: sum(p.numel() for p in m.parameters())
    print(f"resnet18, input {tuple(x.shape)}, eval, {threads} threads, {runs} alternated runs, torch {torch.__version__}")
    print(f"channels removed per coupled unit: 50%   max |compact - masked| = {err:.2e}")
    print(f"params     dense {n(dense)/1e6:7.2f} M  compact {n(small)/1e6:7.2f} M  ratio {n(dense)/n(small):.2f}x")
    print(f"MACs       dense {m_dense/1e9:7.2f} G  compact {m_small/1e9:7.2f} G  theoretical speedup {theo:.2f}x")
    cl = lambda m: fuse(m).to(memory_format=torch.channels_last)
    forms = {'eager': lambda: (dense, small, x), 'bn-folded': lambda: (fuse(dense), fuse(small), x),
             'folded+NHWC': lambda: (cl(dense), cl(small), x.to(memory_format=torch.channels_last)),
             'TorchScript': lambda: (torchscript(dense, x), torchscript(small, x), x),
             'inductor': lambda: (inductor(dense, x), inductor(small, x), x)}
    for form, make in forms.items():
        try: d, s, xx = make()
        except Exception as e:
            print(f"{form:11s} skipped: {type(e).__name__}: {str(e).splitlines()[0][:120]}"); continue
        with torch.no_grad(): ferr = (s(xx) - small(x)).abs().max().item()
        assert ferr < 1e-3, f"{form}: the transformed compact model drifted from the compact one by {ferr}"
        lat = measure_latency({'dense': d, 'compact': s}, xx, n_runs=runs, warmup=warmup, threads=threads).df
        (dw, cw), (dc, cc) = lat.median_ms, lat.cpu_ms
        sw, q1, q3, sc = dw / cw, lat.speedup_q1[1], lat.speedup_q3[1], dc / cc
        print(f"{form:11s} latency dense {dw:6.1f} ms  compact {cw:6.1f} ms  speedup {sw:.2f}x (run by run {q1:.2f}-{q3:.2f})  "
              f"measured/theoretical {sw/theo:.3f} | CPU time {dc:6.1f} / {cc:6.1f} ms  ratio {sc/theo:.3f}")
        if form == 'inductor':
            cd, cs = conv_ms({'dense': d, 'compact': s}, xx).values()
            print(f"inductor convolution kernels alone: dense {cd:7.1f} ms  compact {cs:7.1f} ms  speedup {cd/cs:.2f}x  "
                  f"measured/theoretical {cd/cs/theo:.3f} (the ceiling if everything else were free)")
    print(f"goal: measured/theoretical >= 0.92   load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
          "(wall-clock figures need an otherwise idle machine)")

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--runs', type=int, default=21)
    p.add_argument('--threads', type=int, default=2)
    a = p.parse_args()
    main(runs=a.runs, threads=a.threads)
