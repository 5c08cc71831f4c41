"""Training-time overhead of `PruneCallback` (AGP to 90%) on the digits CNN, measured side by side in one run.

Dense and pruned trainings alternate (their order flips every repeat); wall-clock and process CPU times are
recorded for each run, and the ratios of the medians and of the minima are printed (on a machine shared with other
jobs, the CPU time of this process and the minimum are the least disturbed figures). A third variant recomputes
masks whenever the target moves (`update_every=0`, about every batch with `Weight()` groups: what fasterai's
callback does). The final validation accuracy and sparsity of each variant are printed too.

    python benchmarks/callback_overhead.py [--epochs 5] [--repeats 9] [--threads 1]
"""
import argparse, statistics, time, warnings
import torch
from fastai.callback.all import *
from fastprune.data import digits_dls, digits_cnn, digits_learner
from fastprune.callback import PruneCallback

warnings.filterwarnings('ignore')

VARIANTS = {'dense': ('dense (no callback)', lambda: None),
            'agp90': ('PruneCallback AGP 90% (defaults)', lambda: PruneCallback(0.9, report=False)),  # agp(0, 0.8), update_every=1/16
            'agp90_0': ('AGP 90%, update_every=0', lambda: PruneCallback(0.9, update_every=0, report=False))}

def train(variant, epochs, seed=0):
    "Fit a fresh seeded digits CNN with `fit_one_cycle`; returns (wall s, cpu s, valid accuracy, sparsity)"
    torch.manual_seed(seed)
    cb = VARIANTS[variant][1]()
    dls = digits_dls(bs=64)
    for dl in dls.loaders: dl.fake_l.num_workers = 0  # in-memory tensors: no worker processes, only training is timed
    learn = digits_learner(digits_cnn(), dls, cbs=cb)
    learn.remove_cb(ProgressCallback)
    learn.logger = lambda *a, **k: None
    t, c = time.perf_counter(), time.process_time()
    learn.fit_one_cycle(epochs, 1e-2)
    t, c = time.perf_counter() - t, time.process_time() - c
    return t, c, float(learn.recorder.values[-1][2]), (cb.sparsifier.sparsity() if cb is not None else 0.)

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--epochs', type=int, default=5)
    ap.add_argument('--repeats', type=int, default=9)
    ap.add_argument('--threads', type=int, default=1, help='torch threads (0: leave the default; 1 suits this tiny CNN)')
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    names = list(VARIANTS)
    for v in names: train(v, 1)  # warm-up (allocator, first-call overheads)
    res = {v: [] for v in names}
    for r in range(a.repeats):
        for v in (names if r % 2 == 0 else names[::-1]): res[v].append(train(v, a.epochs))
    col = lambda v, i: [x[i] for x in res[v]]
    stat = {v: dict(wall=statistics.median(col(v, 0)), wall_min=min(col(v, 0)),
                    cpu=statistics.median(col(v, 1)), cpu_min=min(col(v, 1))) for v in names}
    print(f"digits CNN (digits_cnn()), fit_one_cycle({a.epochs}, 1e-2), bs 64, {a.repeats} alternating repeats, "
          f"torch threads={torch.get_num_threads()}")
    print(f"{'variant':<34}{'wall med':>9}{'ratio':>8}{'wall min':>10}{'ratio':>8}{'cpu med':>9}{'ratio':>8}{'accuracy':>10}{'sparsity':>10}")
    d = stat['dense']
    for v in names:
        s = stat[v]
        print(f"{VARIANTS[v][0]:<34}{s['wall']:>8.2f}s{s['wall']/d['wall']:>7.3f}x{s['wall_min']:>9.2f}s"
              f"{s['wall_min']/d['wall_min']:>7.3f}x{s['cpu']:>8.2f}s{s['cpu']/d['cpu']:>7.3f}x"
              f"{statistics.median(col(v, 2)):>10.4f}{res[v][-1][3]:>10.4f}")
    s = stat['agp90']
    print(f"overhead of the callback (defaults): {s['wall']/d['wall']:.3f}x wall (median), {s['wall_min']/d['wall_min']:.3f}x "
          f"wall (min), {s['cpu']/d['cpu']:.3f}x CPU (median); target <= 1.05x")

if __name__ == '__main__': main()
