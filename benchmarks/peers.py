"""Compare fastprune with its peers on the digits CNN, in one run, on the same data, init and epoch budget.

Runs, all with `fit_one_cycle(epochs, lr)` from the same initial weights and data order:
  1. dense: no pruning (the baseline of every ratio);
  2. fastprune: `PruneCallback(0.9, Weight(), Magnitude(), context='global', schedule=agp(0.2, 0.8))`;
  3. fasterai: `SparsifyCallback(0.9, 'weight', 'global', large_final, Schedule(sched_agp, 0.2, 0.8))`
     (fasterai is a benchmark-only dependency: skipped, with the reason, if it cannot be imported);
  4. torch.nn.utils.prune: one-shot global L1 90% of the trained dense model, then fine-tuning for the same
     number of epochs at lr/10 (its time is the fine-tuning alone; the dense training it starts from is run 1).
All prune the same layers: the three convolutions (fastprune leaves the classifier out by default, fasterai
prunes `nn.Conv2d` by default). Printed: validation accuracy, sparsity of the pruned conv weights, Blalock et
al.'s compression ratio (all parameters) and theoretical speedup, wall time and its ratio to the dense run.

    python benchmarks/peers.py [--epochs 5] [--lr 1e-2] [--seed 0] [--threads N]
"""
import argparse, contextlib, copy, io, time, warnings
import torch
from torch import nn
import torch.nn.utils.prune as tprune
import pandas as pd
from fastai.callback.schedule import fit_one_cycle  # noqa: F401 (patches Learner.fit_one_cycle)
from fastprune.data import digits_dls, digits_cnn, digits_learner
from fastprune.metrics import count_params, compression_ratio, theoretical_speedup

CONV = (nn.Conv2d,)


def _learner(init, seed):
    torch.manual_seed(seed)
    return digits_learner(copy.deepcopy(init), digits_dls(seed=seed))


def _fit(learn, epochs, lr, cbs=None, quiet=False):
    "Train silently; returns wall seconds"
    out = io.StringIO()
    t0 = time.perf_counter()
    with learn.no_bar(), learn.no_logging(), contextlib.redirect_stdout(out) if quiet else contextlib.nullcontext():
        learn.fit_one_cycle(epochs, lr, cbs=cbs)
    return time.perf_counter() - t0


def _row(name, learn, secs, x1, dense_model):
    with learn.no_bar(), learn.no_logging(): acc = float(learn.validate()[1])
    m = learn.model
    return dict(method=name, accuracy=acc, sparsity=count_params(m, 'weights', CONV).sparsity,
                compression=compression_ratio(m), speedup=theoretical_speedup(m, x1), wall_s=secs)


def run_dense(init, a):
    learn = _learner(init, a.seed)
    return learn, _fit(learn, a.epochs, a.lr)


def run_fastprune(init, a):
    from fastprune.callback import PruneCallback
    from fastprune.granularity import Weight
    from fastprune.criteria import Magnitude
    from fastprune.schedules import agp
    learn = _learner(init, a.seed)
    cb = PruneCallback(0.9, Weight(), Magnitude(), context='global', schedule=agp(0.2, 0.8), report=False)
    return learn, _fit(learn, a.epochs, a.lr, cbs=cb)


def run_fasterai(init, a):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        from fasterai.sparse.all import SparsifyCallback
        from fasterai.core.all import large_final, Schedule, sched_agp
    learn = _learner(init, a.seed)
    cb = SparsifyCallback(0.9, 'weight', 'global', large_final, Schedule(sched_agp, start_pct=0.2, end_pct=0.8),
                          layer_type=nn.Conv2d)
    return learn, _fit(learn, a.epochs, a.lr, cbs=cb, quiet=True)


def run_torch_prune(dense_learn, a):
    learn = digits_learner(copy.deepcopy(dense_learn.model), digits_dls(seed=a.seed))
    t0 = time.perf_counter()
    convs = [(m, 'weight') for m in learn.model.modules() if isinstance(m, CONV)]
    tprune.global_unstructured(convs, pruning_method=tprune.L1Unstructured, amount=0.9)
    secs = time.perf_counter() - t0 + _fit(learn, a.epochs, a.lr/10)
    for m, n in convs: tprune.remove(m, n)
    return learn, secs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--epochs', type=int, default=5)
    p.add_argument('--lr', type=float, default=1e-2)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--threads', type=int, default=None)
    a = p.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    init = digits_cnn()
    x1 = digits_dls(seed=a.seed).one_batch()[0][:1].cpu()
    rows, skipped = [], []
    dense_learn, secs = run_dense(init, a)
    rows.append(_row('dense', dense_learn, secs, x1, init))
    for name, f in [('fastprune PruneCallback', run_fastprune), ('fasterai SparsifyCallback', run_fasterai)]:
        try: learn, secs = f(init, a)
        except ImportError as e:
            skipped.append(f"{name}: skipped, cannot import it ({e})"); continue
        rows.append(_row(name, learn, secs, x1, init))
    learn, secs = run_torch_prune(dense_learn, a)
    rows.append(_row('torch.nn.utils.prune + fine-tune', learn, secs, x1, init))
    df = pd.DataFrame(rows)
    df['time_vs_dense'] = df.wall_s / df.wall_s[0]
    print(f"digits CNN, {a.epochs} epochs of fit_one_cycle(lr={a.lr}), target 90% of the conv weights, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(df.to_string(index=False, float_format=lambda v: f'{v:.3f}'))
    for s in skipped: print(s)
    return df


if __name__ == '__main__': main()
