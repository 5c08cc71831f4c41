"""One-shot global 90% magnitude pruning of torchvision's ResNet-50: fastprune's `Sparsifier` with its DEFAULT
arguments (`Sparsifier(model, context='global').prune(0.9)`: Weight(), Magnitude(), the 1% floor) against
`torch.nn.utils.prune.global_unstructured(..., L1Unstructured, amount=0.9)` on the same layers (every conv,
the classifier left dense), measured in the same run; a second row without the floor (`min_keep=0`, the problem
torch solves), and a row on a model about 12x larger (`vit_l_16`, 303M Linear weights: its scores no longer fit
`Sparsifier.max_cached_scores`, so they are recomputed per pass) to show time and memory grow linearly.
Goals: <= 0.1x torch's time and <= 200 MiB extra peak memory on ResNet-50 with the defaults.

Each measurement runs in a fresh subprocess: the model is built, the peak-RSS counter of the process is reset
(`/proc/self/clear_refs`), and the method runs; time is wall-clock, memory is peak RSS minus RSS before the call
(torch tensors live outside Python's allocator, so tracemalloc would not see them). The figures are medians over
`--repeats` subprocesses per method, reported as ratios fastprune / torch.

    python benchmarks/global_threshold.py [--repeats 3] [--threads 1 2] [--no-big]
"""
import argparse, json, os, subprocess, sys, time

def _rss_kib(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'): return int(line.split()[1])
    raise RuntimeError(field)

def _reset_peak():
    "Reset the process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)"
    with open('/proc/self/clear_refs', 'w') as f: f.write('5')

def _model(name='resnet50'):
    import torch, torchvision
    torch.manual_seed(0)
    m = getattr(torchvision.models, name)(weights=None).eval()
    kinds = (torch.nn.Conv2d,) if name == 'resnet50' else (torch.nn.Conv2d, torch.nn.Linear)
    layers = [mod for mod in m.modules() if isinstance(mod, kinds)]
    if name != 'resnet50': layers = layers[:-1]                                  # the classifier stays dense
    return m, layers

def _torch(m, layers):
    import torch.nn.utils.prune as tp
    tp.global_unstructured([(l, 'weight') for l in layers], pruning_method=tp.L1Unstructured, amount=0.9)
    return sum(int((l.weight == 0).sum()) for l in layers) / sum(l.weight.numel() for l in layers)

def _fastprune(m, layers, **kw):
    from fastprune.sparsifier import Sparsifier
    sp = Sparsifier(m, context='global', **kw)   # the defaults, or min_keep=0 (no floor: the problem torch solves)
    sp.prune(0.9)                                # the zeros are written before prune returns
    return sp.sparsity()

METHODS = {'torch': _torch, 'fastprune': _fastprune, 'fastprune min_keep=0': lambda m, l: _fastprune(m, l, min_keep=0)}

def run_one(method, threads, model='resnet50'):
    import gc, ctypes, torch
    torch.set_num_threads(threads)
    if method.startswith('fastprune'): import fastprune.sparsifier  # imports are not part of the measurement
    else: import torch.nn.utils.prune
    m, layers = _model(model)
    gc.collect()
    try: ctypes.CDLL('libc.so.6').malloc_trim(0)
    except OSError: pass
    _reset_peak()
    base = _rss_kib('VmRSS')
    t0 = time.perf_counter()
    with torch.no_grad(): sparsity = METHODS[method](m, layers)
    dt = time.perf_counter() - t0
    peak = _rss_kib('VmHWM') - base
    print(json.dumps(dict(method=method, time_s=dt, peak_extra_mib=peak / 1024, sparsity=sparsity,
                          weights=sum(l.weight.numel() for l in layers))))

def check_same_masks(threads):
    "Both methods on one model copy each: fraction of weights where the masks agree"
    import copy, torch
    torch.set_num_threads(threads)
    m, layers = _model()
    m2 = copy.deepcopy(m); layers2 = [mod for mod in m2.modules() if isinstance(mod, torch.nn.Conv2d)]
    _torch(m, layers); _fastprune(m2, layers2, min_keep=0)
    n = sum(l.weight.numel() for l in layers)
    same = sum(int((l.weight_mask.bool() == l2.prune_mask).sum()) for l, l2 in zip(layers, layers2))
    print(json.dumps(dict(agree=same / n, n=n)))

def _sub(args):
    out = subprocess.run([sys.executable, __file__] + args, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])

def bench(repeats, threads):
    import statistics
    res = {k: [] for k in METHODS}
    for _ in range(repeats):  # alternate the methods so machine load hits all alike
        for meth in res: res[meth].append(_sub(['--run', meth, '--threads', str(threads)]))
    med = {k: {**{f: statistics.median(r[f] for r in v) for f in ('time_s', 'peak_extra_mib', 'sparsity')}, 'weights': v[0]['weights']}
           for k, v in res.items()}
    t = med['torch']
    print(f"\n{threads} thread(s), median of {repeats} runs")
    print(f"{'':30}{'time (s)':>10}{'peak extra RSS (MiB)':>24}{'sparsity':>10}{'time / torch':>14}{'memory / torch':>16}")
    for k, v in med.items():
        print(f"{k:<30}{v['time_s']:>10.3f}{v['peak_extra_mib']:>24.1f}{v['sparsity']:>10.4f}"
              f"{v['time_s'] / t['time_s']:>14.3f}{v['peak_extra_mib'] / t['peak_extra_mib']:>16.3f}")
    f = med['fastprune']
    print(f"goal with the defaults: time <= 0.1x torch (got {f['time_s'] / t['time_s']:.3f}x), "
          f"peak extra <= 200 MiB (got {f['peak_extra_mib']:.0f} MiB)", flush=True)
    return med

def bench_big(threads, small):
    "The defaults on vit_l_16 (~12x ResNet-50's conv weights): time and memory per weight against ResNet-50's"
    r = _sub(['--run', 'fastprune', '--threads', str(threads), '--model', 'vit_l_16'])
    s = small['fastprune']
    x = r['weights'] / s['weights']
    print(f"\nvit_l_16, {r['weights']:,} Linear weights ({x:.1f}x ResNet-50's), defaults, {threads} thread(s), one run: "
          f"{r['time_s']:.2f} s ({r['time_s'] / s['time_s']:.1f}x ResNet-50's time), peak extra {r['peak_extra_mib']:.0f} MiB "
          f"({r['peak_extra_mib'] / s['peak_extra_mib']:.1f}x), sparsity {r['sparsity']:.4f}; linear growth would be {x:.1f}x")

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--threads', type=int, nargs='+', default=[1, 2], help='torch intra-op threads (one benchmark per value)')
    p.add_argument('--no-big', action='store_true', help='skip the vit_l_16 row')
    p.add_argument('--run', choices=list(METHODS), help=argparse.SUPPRESS)
    p.add_argument('--model', default='resnet50', help=argparse.SUPPRESS)
    p.add_argument('--check', action='store_true', help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.run: return run_one(a.run, a.threads[0], a.model)
    if a.check: return check_same_masks(a.threads[0])
    chk = _sub(['--check', '--threads', str(a.threads[0])])
    print(f"ResNet-50 (weights=None), global 90% L1 magnitude pruning of its {chk['n']:,} conv weights (fc left dense)")
    print(f"masks of the two methods agree on {chk['agree']:.6%} of the weights (fastprune with min_keep=0, as torch has no floor)")
    for th in a.threads:
        med = bench(a.repeats, th)
        if not a.no_big: bench_big(th, med)

if __name__ == '__main__': main()
