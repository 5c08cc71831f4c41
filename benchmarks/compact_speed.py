"""Does physical compaction turn filter pruning into a real CPU speed-up?

torchvision resnet18 (random weights), input 8x3x224x224, eval mode, 2 threads. 50% of the channels of every
dependency-coupled unit are pruned (`Sparsifier(..., Filter(), context='local', example_inputs=...)`, so the residual
streams lose half their channels too), then `compact` removes them. Printed: MACs before/after (FlopCounterMode),
the theoretical speed-up (MAC ratio), the measured latency speed-up (median of alternated dense/compact runs in this
process) and measured/theoretical (goal >= 0.92).

Two forms of each model are timed: `eager` (as returned, BatchNorm separate) and `bn-folded` (the same for both models:
`torch.fx.experimental.optimization.fuse` folds every BatchNorm into its convolution, as any inference deployment does) and `folded+NHWC` (also in channels-last memory format, where
oneDNN's convolutions and max-pooling need no layout reorders).
MACs count convolutions and linears only; BatchNorm, ReLU, max-pool and the residual adds are memory-bound, shrink only
with the channel count (2x here, not 4x), so they weigh more in the small model and eager latency lags the MAC ratio.
The process CPU time per run is printed too: on a shared, loaded machine it is a steadier measure than the wall clock.

Run: python benchmarks/compact_speed.py [--runs 15] [--threads 2]
(on a machine shared with other jobs, prefix OMP_WAIT_POLICY=PASSIVE so that waiting threads do not spin)
"""
import argparse, os, statistics, time
import torch, torchvision
from torch.utils.flop_counter import FlopCounterMode
from torch.fx.experimental.optimization import fuse
from fastprune.sparsifier import Sparsifier
from fastprune.granularity import Filter
from fastprune.criteria import Magnitude
from fastprune.compact import compact

def macs(model, x):
    with FlopCounterMode(display=False) as fc, torch.inference_mode(): model(x)
    return fc.get_total_flops() / 2

def timeit(models, x, runs, warmup):
    "median wall-clock and process-CPU ms per model, alternating the models (and who goes first) run by run"
    wall, cpu = {k: [] for k in models}, {k: [] for k in models}
    with torch.inference_mode():
        for _ in range(warmup):
            for m in models.values(): m(x)
        for i in range(runs):
            for k in (list(models) if i % 2 == 0 else list(models)[::-1]):
                c, t = time.process_time(), time.perf_counter()
                models[k](x)
                wall[k].append(time.perf_counter() - t); cpu[k].append(time.process_time() - c)
    med = lambda d: {k: statistics.median(v) * 1000 for k, v in d.items()}
    return med(wall), med(cpu)

def main(runs=15, warmup=3, threads=2, bs=8, size=224):
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
    m_dense, m_small = macs(dense, x), macs(small, x)
    theo = m_dense / m_small
    n = lambda m: sum(p.numel() for p in m.parameters())
    print(f"resnet18, input {tuple(x.shape)}, eval, {threads} threads, {runs} alternated runs, torch {torch.__version__}")
    print(f"channels removed per coupled unit: 50%   max |compact - masked| = {err:.2e}")
    print(f"params     dense {n(dense)/1e6:7.2f} M  compact {n(small)/1e6:7.2f} M  ratio {n(dense)/n(small):.2f}x")
    print(f"MACs       dense {m_dense/1e9:7.2f} G  compact {m_small/1e9:7.2f} G  theoretical speedup {theo:.2f}x")
    cl = lambda m: fuse(m).to(memory_format=torch.channels_last)
    forms = {'eager': (dense, small, x), 'bn-folded': (fuse(dense), fuse(small), x),
             'folded+NHWC': (cl(dense), cl(small), x.to(memory_format=torch.channels_last))}
    for form, (d, s, xx) in forms.items():
        wall, cpu = timeit({'dense': d, 'compact': s}, xx, runs, warmup)
        sw, sc = wall['dense'] / wall['compact'], cpu['dense'] / cpu['compact']
        print(f"{form:11s} latency dense {wall['dense']:7.1f} ms  compact {wall['compact']:7.1f} ms  speedup {sw:.2f}x  "
              f"measured/theoretical {sw/theo:.3f} | CPU time {cpu['dense']:7.1f} / {cpu['compact']:7.1f} ms  "
              f"speedup {sc:.2f}x  ratio {sc/theo:.3f}")
    print(f"goal: measured/theoretical >= 0.92   load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
          "(wall-clock figures need an otherwise idle machine)")

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--runs', type=int, default=15)
    p.add_argument('--threads', type=int, default=2)
    a = p.parse_args()
    main(runs=a.runs, threads=a.threads)
