"""One-shot global 90% magnitude pruning of torchvision's ResNet-50: fastprune's `Sparsifier` against
`torch.nn.utils.prune.global_unstructured(..., L1Unstructured, amount=0.9)` on the same layers (every conv,
the classifier left dense), measured in the same run.

Each measurement runs in a fresh subprocess: the model is built, the peak-RSS counter of the process is reset
(`/proc/self/clear_refs`), and the method runs; time is wall-clock, memory is peak RSS minus RSS before the call
(torch tensors live outside Python's allocator, so tracemalloc would not see them). The figures are medians over
`--repeats` subprocesses per method, reported as ratios fastprune / torch.

    python benchmarks/global_threshold.py [--repeats 3] [--threads 1 2]
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

def _model():
    import torch, torchvision
    torch.manual_seed(0)
    m = torchvision.models.resnet50(weights=None).eval()
    layers = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]  # = Sparsifier's default selection
    return m, layers

def _torch(m, layers):
    import torch.nn.utils.prune as tp
    tp.global_unstructured([(l, 'weight') for l in layers], pruning_method=tp.L1Unstructured, amount=0.9)
    return sum(int((l.weight == 0).sum()) for l in layers) / sum(l.weight.numel() for l in layers)

def _fastprune(m, layers):
    from fastprune.sparsifier import Sparsifier
    sp = Sparsifier(m, context='global', min_keep=0)  # no floor: the same problem torch solves
    sp.prune(0.9).apply_masks()
    return sp.sparsity()

def run_one(method, threads):
    import gc, ctypes, torch
    torch.set_num_threads(threads)
    if method == 'fastprune': import fastprune.sparsifier  # imports are not part of the measurement
    else: import torch.nn.utils.prune
    m, layers = _model()
    gc.collect()
    try: ctypes.CDLL('libc.so.6').malloc_trim(0)
    except OSError: pass
    _reset_peak()
    base = _rss_kib('VmRSS')
    t0 = time.perf_counter()
    with torch.no_grad(): sparsity = (_torch if method == 'torch' else _fastprune)(m, layers)
    dt = time.perf_counter() - t0
    peak = _rss_kib('VmHWM') - base
    print(json.dumps(dict(method=method, time_s=dt, peak_extra_mib=peak / 1024, sparsity=sparsity)))

def check_same_masks(threads):
    "Both methods on one model copy each: fraction of weights where the masks agree"
    import copy, torch
    torch.set_num_threads(threads)
    m, layers = _model()
    m2 = copy.deepcopy(m); layers2 = [mod for mod in m2.modules() if isinstance(mod, torch.nn.Conv2d)]
    _torch(m, layers); _fastprune(m2, layers2)
    n = sum(l.weight.numel() for l in layers)
    same = sum(int((l.weight_mask.bool() == l2.prune_mask).sum()) for l, l2 in zip(layers, layers2))
    print(json.dumps(dict(agree=same / n, n=n)))

def _sub(args):
    out = subprocess.run([sys.executable, __file__] + args, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])

def bench(repeats, threads):
    import statistics
    res = {'torch': [], 'fastprune': []}
    for _ in range(repeats):  # alternate the methods so machine load hits both alike
        for meth in res: res[meth].append(_sub(['--run', meth, '--threads', str(threads)]))
    med = {k: {f: statistics.median(r[f] for r in v) for f in ('time_s', 'peak_extra_mib', 'sparsity')} for k, v in res.items()}
    t, f = med['torch'], med['fastprune']
    print(f"\n{threads} thread(s), median of {repeats} runs")
    print(f"{'':26}{'time (s)':>10}{'peak extra RSS (MiB)':>24}{'sparsity':>10}")
    for k, v in (('torch global_unstructured', t), ('fastprune Sparsifier', f)):
        print(f"{k:<26}{v['time_s']:>10.3f}{v['peak_extra_mib']:>24.1f}{v['sparsity']:>10.4f}")
    print(f"time ratio fastprune/torch:   {f['time_s'] / t['time_s']:.3f}  (target <= 0.1)")
    print(f"memory ratio fastprune/torch: {f['peak_extra_mib'] / t['peak_extra_mib']:.3f}  "
          f"(fastprune {f['peak_extra_mib']:.0f} MiB extra, target <= 200 MiB)", flush=True)

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--threads', type=int, nargs='+', default=[1, 2], help='torch intra-op threads (one benchmark per value)')
    p.add_argument('--run', choices=['torch', 'fastprune'], help=argparse.SUPPRESS)
    p.add_argument('--check', action='store_true', help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.run: return run_one(a.run, a.threads[0])
    if a.check: return check_same_masks(a.threads[0])
    chk = _sub(['--check', '--threads', str(a.threads[0])])
    print(f"ResNet-50 (weights=None), global 90% L1 magnitude pruning of its {chk['n']:,} conv weights (fc left dense)")
    print(f"masks of the two methods agree on {chk['agree']:.6%} of the weights (fastprune with min_keep=0, as torch has no floor)")
    for th in a.threads: bench(a.repeats, th)

if __name__ == '__main__': main()
