"""Accuracy recovered after one-shot pruning, by method, on the noisy digits (`fastprune.data.noisy_digits_dls`).

For each seed a dense `digits_cnn` is trained (`fit_one_cycle(dense_epochs, 1e-2)`); copies of it are pruned once
under one global magnitude threshold, over the weights or over the (coupled) filters, then recovered with:

- none: evaluated as pruned;
- BN recalibration: `learn.recalibrate_bn()` (10 training batches, no training);
- fine-tuning: `fit(epochs, 1e-3)` (a tenth of the training peak, constant), masks kept by `PruneCallback(one_shot())`;
- fine-tuning + distillation: the same with `DistillCallback(dense)` (T=4, alpha=0.5, the defaults);
- LR rewinding (Renda et al. 2020): `fit_one_cycle(epochs, 1e-2)`, the training schedule again;
- with --extra, LR rewinding + distillation too (not a goal of issue 14, for information).

Printed: validation accuracy per method and sparsity (mean over the seeds, sample standard deviation and range), the
time of each method relative to fine-tuning (medians of wall and process CPU time over all its runs, measured in this
process), and the goals of issue 14 next to the figures:

- at 90% global weights and at 50% global filters, distillation + fine-tuning beats fine-tuning alone by more than
  the seed-to-seed spread (the larger of the two methods' standard deviations over the seeds);
- BN recalibration alone recovers at least half of the one-shot accuracy drop at 50% filters:
  (recalibrated - pruned) / (dense - pruned) >= 0.5, on the seed means.

    python benchmarks/recovery.py [--seeds 3] [--epochs 2] [--dense-epochs 8] [--copies 1] [--extra] [--threads 1]
"""
import argparse, copy, os, random, statistics, time, warnings
import torch
from fastai.callback.all import *
from fastai.torch_core import set_seed
from fastprune.data import noisy_digits_dls, digits_learner
from fastprune.granularity import Weight, Filter
from fastprune.schedules import one_shot
from fastprune.sparsifier import Sparsifier
from fastprune.callback import PruneCallback
from fastprune.units import learner_example_inputs
from fastprune.recovery import DistillCallback

warnings.filterwarnings('ignore')

GRANULARITIES = {'weights': Weight(), 'filters': Filter()}
HEADLINE = {'weights': 0.9, 'filters': 0.5}

def methods(epochs, extra=False):
    "name -> recover(learn, keep, teacher): keep is a `PruneCallback` that holds the masks while training"
    m = {'none': lambda l, k, t: None,
         'BN recalibration': lambda l, k, t: l.recalibrate_bn(),
         'fine-tuning': lambda l, k, t: l.fit(epochs, 1e-3, cbs=k),
         'fine-tuning + distillation': lambda l, k, t: l.fit(epochs, 1e-3, cbs=[k, DistillCallback(t)]),
         'LR rewinding': lambda l, k, t: l.fit_one_cycle(epochs, 1e-2, cbs=k)}
    if extra: m['LR rewinding + distillation'] = lambda l, k, t: l.fit_one_cycle(epochs, 1e-2, cbs=[k, DistillCallback(t)])
    return m

def quiet(learn):
    learn.remove_cb(ProgressCallback)
    learn.logger = lambda *a, **k: None
    return learn

def learner_for(dls, seed, model=None):
    "A learner whose initialisation and batch order depend only on `seed`"
    set_seed(seed)
    dls.train.rng = random.Random(seed)
    return quiet(digits_learner(model, dls))

def accuracy_of(learn): return float(learn.validate()[1])

def run(seeds=(0, 1, 2), epochs=2, dense_epochs=8, copies=1, sparsities=None, extra=False, bs=64):
    "Train the dense models and every (granularity, sparsity, method); returns (dense accuracies, rows)"
    sparsities = sparsities or {'weights': (0.8, 0.9, 0.95), 'filters': (0.3, 0.5, 0.7)}
    dls = noisy_digits_dls(bs=bs, copies=copies)
    for dl in dls.loaders: dl.fake_l.num_workers = 0   # in-memory tensors: no worker processes
    ms, dense, rows = methods(epochs, extra), {}, []
    for seed in seeds:
        learn = learner_for(dls, seed)
        learn.fit_one_cycle(dense_epochs, 1e-2)
        dense[seed] = (learn.model, accuracy_of(learn))
        for gname, ss in sparsities.items():
            gran = GRANULARITIES[gname]
            for s in ss:
                for name, recover in ms.items():
                    learn = learner_for(dls, seed, copy.deepcopy(dense[seed][0]))
                    Sparsifier(learn.model, gran, context='global', example_inputs=learner_example_inputs(learn)).prune(s)
                    keep = PruneCallback(s, gran, context='global', schedule=one_shot(), report=False)
                    w, c = time.perf_counter(), time.process_time()
                    recover(learn, keep, dense[seed][0])
                    w, c = time.perf_counter() - w, time.process_time() - c
                    if keep.sparsifier is not None:   # the masks were kept: exactly the one-shot groups
                        sp = keep.sparsifier
                        assert sum(int(u.pruned().sum()) for u in sp.units) == sp.target_groups(s) - sp.shortfall
                    rows.append(dict(seed=seed, granularity=gname, sparsity=s, method=name, accuracy=accuracy_of(learn),
                                     wall=w, cpu=c))
    return {s: a for s, (_, a) in dense.items()}, rows

def _sel(rows, **kw): return [r for r in rows if all(r[k] == v for k, v in kw.items())]
def _std(xs): return statistics.stdev(xs) if len(xs) > 1 else 0.

def report(dense, rows, epochs):
    "Print the table, the costs and the goals; returns {goal: met}"
    names = list(dict.fromkeys(r['method'] for r in rows))
    cols = list(dict.fromkeys((r['granularity'], r['sparsity']) for r in rows))
    acc = lambda m, g, s: [r['accuracy'] for r in _sel(rows, method=m, granularity=g, sparsity=s)]
    d = list(dense.values())
    print(f"dense accuracy: {statistics.mean(d):.4f} (std {_std(d):.4f}, seeds {list(dense)})")
    print("accuracy, mean over seeds ± sample std [min, max]")
    w = 30
    print(f"{'method':<{w}}" + ''.join(f"{f'{g} {s:.0%}':>32}" for g, s in cols))
    for m in names:
        cells = []
        for g, s in cols:
            a = acc(m, g, s)
            cells.append(f"{statistics.mean(a):.4f} ± {_std(a):.4f} [{min(a):.3f}, {max(a):.3f}]")
        print(f"{m:<{w}}" + ''.join(f"{c:>32}" for c in cells))
    ft = [r for r in rows if r['method'] == 'fine-tuning']
    print(f"\ntime relative to fine-tuning ({epochs} epochs; medians over all sparsities and seeds)")
    print(f"{'method':<{w}}{'wall':>10}{'ratio':>9}{'cpu':>10}{'ratio':>9}")
    fw, fc = statistics.median(r['wall'] for r in ft), statistics.median(r['cpu'] for r in ft)
    for m in names:
        rs = _sel(rows, method=m)
        mw, mc = statistics.median(r['wall'] for r in rs), statistics.median(r['cpu'] for r in rs)
        print(f"{m:<{w}}{mw:>9.3f}s{mw/fw:>8.3f}x{mc:>9.3f}s{mc/fc:>8.3f}x")
    print("\ngoals (issue 14)")
    met = {}
    for g, s in HEADLINE.items():
        if (g, s) not in cols: continue
        a_ft, a_kd = acc('fine-tuning', g, s), acc('fine-tuning + distillation', g, s)
        margin, spread = statistics.mean(a_kd) - statistics.mean(a_ft), max(_std(a_ft), _std(a_kd))
        paired = [k - f for k, f in zip(a_kd, a_ft)]
        ok = margin > spread
        met[f'distillation {g} {s:.0%}'] = ok
        print(f"  {g} {s:.0%}: distillation + FT - FT = {margin:+.4f}, seed spread (max std) = {spread:.4f} -> "
              f"{'MET' if ok else 'NOT MET'} (goal: margin > spread); per-seed differences {[round(p, 4) for p in paired]}")
    if ('filters', 0.5) in cols:
        none, recal = statistics.mean(acc('none', 'filters', 0.5)), statistics.mean(acc('BN recalibration', 'filters', 0.5))
        frac = (recal - none)/(statistics.mean(d) - none)
        met['BN recalibration filters 50%'] = frac >= 0.5
        print(f"  filters 50%: BN recalibration recovers {frac:.1%} of the one-shot drop (dense {statistics.mean(d):.4f}, "
              f"pruned {none:.4f}, recalibrated {recal:.4f}) -> {'MET' if frac >= 0.5 else 'NOT MET'} (goal: >= 50%)")
    return met

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--seeds', type=int, default=3)
    ap.add_argument('--epochs', type=int, default=2, help='epochs of each training recovery method')
    ap.add_argument('--dense-epochs', type=int, default=8)
    ap.add_argument('--copies', type=int, default=1, help='distorted versions of each digit (noisy_digits_dls)')
    ap.add_argument('--headline-only', action='store_true', help='only 90%% weights and 50%% filters')
    ap.add_argument('--extra', action='store_true', help='also LR rewinding + distillation')
    ap.add_argument('--threads', type=int, default=1, help='torch threads (0: leave the default; 1 suits this tiny CNN)')
    a = ap.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    sparsities = {g: (s,) for g, s in HEADLINE.items()} if a.headline_only else None
    print(f"noisy digits (copies={a.copies}), digits_cnn, dense fit_one_cycle({a.dense_epochs}, 1e-2), recovery budget "
          f"{a.epochs} epochs, bs 64, {a.seeds} seeds, torch threads={torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    t = time.perf_counter()
    dense, rows = run(tuple(range(a.seeds)), a.epochs, a.dense_epochs, a.copies, sparsities, a.extra)
    met = report(dense, rows, a.epochs)
    print(f"\n{time.perf_counter() - t:.0f} s in all; load average now {os.getloadavg()[0]:.2f}")
    return met

if __name__ == '__main__': main()
