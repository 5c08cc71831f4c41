"""Criteria compared on the digits CNN: accuracy after pruning while training, and what collecting statistics costs.

Every run trains a fresh seeded `digits_cnn()` with fastai's defaults (`fit_one_cycle(epochs, 1e-2)`, Adam) and a
`PruneCallback` under one global threshold, on the schedule `agp(0.3, 0.8)` (dense training for 30% of the fit, the
target reached at 80%, fine-tuning after), to two targets: 50% of the filters, and 90% of the weights (the criteria
that score only filters are left out there). "BNScale + slimming" adds `SparsityRegularizer('slimming', lam,
until='prune')`: the L1 penalty on the BatchNorm scales during the dense phase.

The table gives the final validation accuracy (mean and standard deviation over the seeds) and the training time as a
ratio against Magnitude's run with the same seed and target, the median over seeds, in wall-clock and process CPU
time (the less disturbed figure on a shared machine), and the ratio of the smallest CPU times over the seeds (the
least disturbed of all). Criteria run in the opposite order every other seed. The time
ratio of the activation criteria is the cost of their forward hooks (and of their scoring); its goal is <= 1.10x.

    python benchmarks/criteria.py [--epochs 8] [--seeds 3] [--threads 1] [--lam 1e-3]
"""
import argparse, os, statistics, time, warnings
import torch
from fastai.callback.all import *
from fastai.torch_core import set_seed
from fastprune.data import digits_dls, digits_cnn, digits_learner
from fastprune.granularity import as_granularity
from fastprune.criteria import Magnitude, Taylor, BNScale, Random
from fastprune.activations import ActivationMean, APoZ, Wanda, ActivationRedundancy
from fastprune.schedules import agp
from fastprune.callback import PruneCallback
from fastprune.regularize import SparsityRegularizer

warnings.filterwarnings('ignore')

CRITERIA = {  # name: (criterion factory, adds slimming, is an activation criterion)
    'Magnitude': (Magnitude, False, False), 'Taylor': (Taylor, False, False), 'BNScale': (BNScale, False, False),
    'BNScale + slimming': (BNScale, True, False), 'ActivationMean': (ActivationMean, False, True),
    'APoZ': (APoZ, False, True), 'Wanda': (Wanda, False, True), 'ActivationRedundancy': (ActivationRedundancy, False, True),
    'Random': (Random, False, False)}
TARGETS = {'filters 50%': ('filter', 0.5), 'weights 90%': ('weight', 0.9)}
GOAL = 1.10

def supports(name, granularity):
    try: CRITERIA[name][0]().check(as_granularity(granularity))
    except ValueError: return False
    return True

def train(name, target, seed, epochs, lam):
    "Fit a fresh seeded digits CNN pruned by criterion `name` to `target`; returns (wall s, cpu s, accuracy, sparsity)"
    make, slim, _ = CRITERIA[name]
    gran, sparsity = TARGETS[target]
    set_seed(seed, reproducible=True)
    dls = digits_dls(bs=64, seed=seed)
    for dl in dls.loaders: dl.fake_l.num_workers = 0  # in-memory tensors: no worker processes, only training is timed
    cb = PruneCallback(sparsity, gran, make(), context='global', schedule=agp(0.3, 0.8), report=False)
    cbs = [cb] + ([SparsityRegularizer('slimming', lam=lam, until='prune')] if slim else [])
    learn = digits_learner(digits_cnn(), dls, cbs=cbs)
    learn.remove_cb(ProgressCallback)
    learn.logger = lambda *a, **k: None
    t, c = time.perf_counter(), time.process_time()
    learn.fit_one_cycle(epochs, 1e-2)
    t, c = time.perf_counter() - t, time.process_time() - c
    return t, c, float(learn.recorder.values[-1][2]), cb.sparsifier.sparsity()

def main(epochs:int=8, seeds:int=3, threads:int=1, lam:float=1e-3):
    if threads: torch.set_num_threads(threads)
    runs = [(n, t) for t in TARGETS for n in CRITERIA if supports(n, TARGETS[t][0])]
    train('Magnitude', 'filters 50%', 0, 1, lam)  # warm-up (allocator, first-call overheads)
    res = {r: [] for r in runs}
    for s in range(seeds):
        for r in (runs if s % 2 == 0 else runs[::-1]): res[r].append(train(*r, s, epochs, lam))
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
    print(f"digits CNN, fit_one_cycle({epochs}, 1e-2) with PruneCallback(global, agp(0.3, 0.8)), {seeds} seeds, "
          f"torch threads={torch.get_num_threads()}, load average at the end {load:.1f} on {os.cpu_count()} CPUs; "
          f"slimming lam={lam:g}")
    head = f"{'criterion':<22}" + ''.join(f"{t + ' accuracy':>22}{'wall':>8}{'cpu':>8}{'cpu min':>9}" for t in TARGETS)
    print(head + '  goal'); print('-' * (len(head) + 16))
    ratio = lambda r, i: statistics.median(x[i] / b[i] for x, b in zip(res[r], res[('Magnitude', r[1])]))
    ratio_min = lambda r, i: min(x[i] for x in res[r]) / min(b[i] for b in res[('Magnitude', r[1])])
    for n, (_, _, act) in CRITERIA.items():
        line = f"{n:<22}"
        for t in TARGETS:
            if (n, t) not in res: line += f"{'n/a':>22}{'':>8}{'':>8}{'':>9}"; continue
            acc = [x[2] for x in res[(n, t)]]
            sd = statistics.stdev(acc) if len(acc) > 1 else 0.
            line += f"{statistics.mean(acc):>15.4f} ±{sd:.3f}{ratio((n, t), 0):>7.3f}x{ratio((n, t), 1):>7.3f}x{ratio_min((n, t), 1):>8.3f}x"
        print(line + (f"  time <= {GOAL:.2f}x" if act else ''))
    print("wall, cpu: median over seeds of the time / Magnitude's time (same seed and target); cpu min: ratio of the "
          "smallest CPU times over seeds")
    for what, f in (('median', ratio), ('min', ratio_min)):
        worst = max(((f(r, 1), r) for r in res if CRITERIA[r[0]][2]))
        print(f"slowest activation criterion ({what}): {worst[1][0]} ({worst[1][1]}), {worst[0]:.3f}x Magnitude's CPU time; "
              f"goal <= {GOAL:.2f}x: {'met' if worst[0] <= GOAL else 'NOT met'}")
    sp = {t: statistics.mean(x[3] for r in runs if r[1] == t for x in res[r]) for t in TARGETS}
    print('sparsity of the pruned layers\' weights (mean): ' + ', '.join(f"{t}: {v:.2%}" for t, v in sp.items()))

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--epochs', type=int, default=8)
    ap.add_argument('--seeds', type=int, default=3)
    ap.add_argument('--threads', type=int, default=1, help='torch threads (0: leave the default; 1 suits this tiny CNN)')
    ap.add_argument('--lam', type=float, default=1e-3, help="slimming penalty of 'BNScale + slimming'")
    a = ap.parse_args()
    main(a.epochs, a.seeds, a.threads, a.lam)
