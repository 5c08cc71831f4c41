"""Training-time overhead of `PruneCallback` (AGP to 90%) on the digits CNN, measured side by side in one run.

Dense and pruned trainings alternate (their order flips every repeat) and the ratio of the median times is printed,
together with a variant that recomputes masks whenever the target moves (`update_every=0`, about every batch with
`Weight()` groups: what fasterai's callback does) and the final validation accuracy of each.

    python benchmarks/callback_overhead.py [--epochs 5] [--repeats 5] [--threads 1]
"""
import argparse, statistics, time, warnings
import torch
from fastai.callback.all import *
from fastprune.data import digits_dls, digits_cnn, digits_learner
from fastprune.callback import PruneCallback

warnings.filterwarnings('ignore')

def train(variant, epochs, seed=0):
    "Fit a fresh seeded digits CNN with `fit_one_cycle`; returns (seconds, valid accuracy, sparsity)"
    torch.manual_seed(seed)
    cb = None
    if variant == 'agp90': cb = PruneCallback(0.9, summary=False)                    # defaults: agp(0, 0.8), update_every=1/32
    elif variant == 'agp90_every_batch': cb = PruneCallback(0.9, update_every=0, summary=False)
    learn = digits_learner(digits_cnn(), digits_dls(bs=64), cbs=cb)
    learn.remove_cb(ProgressCallback)
    learn.logger = lambda *a, **k: None
    t = time.perf_counter()
    learn.fit_one_cycle(epochs, 1e-2)
    dt = time.perf_counter() - t
    sp = cb.sparsifier.sparsity() if cb is not None else 0.
    return dt, float(learn.recorder.values[-1][2]), sp

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--epochs', type=int, default=5)
    ap.add_argument('--repeats', type=int, default=5)
    ap.add_argument('--threads', type=int, default=1, help='torch threads (0: leave the default; 1 suits this tiny CNN)')
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    variants = ['dense', 'agp90', 'agp90_every_batch']
    train('dense', 1); train('agp90', 1)  # warm-up (allocator, first-call overheads)
    res = {v: [] for v in variants}
    for r in range(a.repeats):
        order = variants if r % 2 == 0 else variants[::-1]
        for v in order: res[v].append(train(v, a.epochs))
    med = {v: statistics.median(x[0] for x in res[v]) for v in variants}
    print(f"digits CNN, fit_one_cycle({a.epochs}), {a.repeats} alternating repeats, torch threads={torch.get_num_threads()}")
    print(f"{'variant':<34}{'median s':>10}{'min-max s':>14}{'ratio':>8}{'accuracy':>10}{'sparsity':>10}")
    for v, label in zip(variants, ['dense (no callback)', 'PruneCallback AGP 90% (defaults)', 'AGP 90%, update_every=0']):
        ts = [x[0] for x in res[v]]
        acc = statistics.median(x[1] for x in res[v]); sp = res[v][-1][2]
        print(f"{label:<34}{med[v]:>10.2f}{min(ts):>7.2f}-{max(ts):<6.2f}{med[v]/med['dense']:>7.3f}x{acc:>10.4f}{sp:>10.4f}")
    print(f"overhead of the callback (defaults): {med['agp90']/med['dense']:.3f}x (target <= 1.05x)")

if __name__ == '__main__': main()
