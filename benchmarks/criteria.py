"""Criteria compared on the digits CNN: accuracy after pruning while training, and what collecting statistics costs.

Every run trains a fresh seeded `digits_cnn()` with fastai's defaults (`fit_one_cycle(epochs, 1e-2)`, Adam) and a
`PruneCallback` under one global threshold, on the schedule `agp(0.3, 0.8)` (dense training for 30% of the fit, the
target reached at 80%, fine-tuning after), to two targets: 50% of the filters, and 90% of the weights (the criteria
that score only filters are left out there). "BNScale + slimming" adds `SparsityRegularizer('slimming', lam,
until='prune')`: the L1 penalty on the BatchNorm scales during the dense phase.

The first table gives the final validation accuracy (mean and standard deviation over the seeds), and the CPU time of
each fit as a ratio against Magnitude's fit with the same seed and target (median over seeds). On a shared machine
whole fits seconds apart see different loads, so this ratio is noisy (Random, which costs nothing, shows the noise).

The second table measures what collecting statistics costs, in the same process and under the same load for every
criterion: training steps (forward, loss, backward, `Sparsifier.update()`, Adam step) of the digits CNN (batch 64)
and of a torchvision ResNet-18 on 32x32 images (batch 32), one step of each criterion in turn, round after round, so
that every criterion sees the same interference. The median CPU time of a step, against Magnitude's, is the figure
the goal applies to: <= 1.10x. (fastai's own per-batch work, not in these steps, only lowers the ratio.)

    python benchmarks/criteria.py [--epochs 8] [--seeds 3] [--rounds 40] [--threads 1] [--lam 1e-3]
"""
import argparse, os, statistics, time, warnings
import torch
from fastai.callback.all import *
import torchvision
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
GOAL = 1.10  # time of a training step collecting statistics / Magnitude's

def supports(name, granularity):
    try: CRITERIA[name][0]().check(as_granularity(granularity))
    except ValueError: return False
    return True

def train(name, target, seed, epochs, lam):
    "Fit a fresh seeded digits CNN pruned by criterion `name` to `target`; returns (fit cpu s, accuracy, sparsity)"
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
    c = time.process_time()
    learn.fit_one_cycle(epochs, 1e-2)
    c = time.process_time() - c
    return c, float(learn.recorder.values[-1][2]), cb.sparsifier.sparsity()

def step_costs(rounds, threads):
    "{model: {criterion: median CPU s of a training step}}, one step of each criterion in turn"
    from fastprune.sparsifier import Sparsifier
    models = {'digits CNN, batch 64': (digits_cnn, (64, 1, 8, 8), 10),
              'ResNet-18 32x32, batch 32': (lambda: torchvision.models.resnet18(num_classes=10), (32, 3, 32, 32), 10)}
    names = ['Magnitude', 'ActivationMean', 'APoZ', 'Wanda', 'ActivationRedundancy']
    res = {}
    for label, (make, shape, n_cls) in models.items():
        torch.manual_seed(0)
        x, y = torch.randn(*shape), torch.randint(0, n_cls, (shape[0],))
        runs = {}
        for n in names:
            torch.manual_seed(0)
            model = make().train()
            sp = Sparsifier(model, 'filter', CRITERIA[n][0](), context='global')
            runs[n] = (model, sp, torch.optim.Adam(model.parameters(), 1e-3))
        def step(n):
            model, sp, opt = runs[n]
            t = time.process_time()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            sp.update(); opt.step(); opt.zero_grad()
            return time.process_time() - t
        for n in names: step(n); step(n)   # warm-up
        times = {n: [] for n in names}
        for r in range(rounds):
            for n in (names if r % 2 == 0 else names[::-1]): times[n].append(step(n))
        res[label] = {n: statistics.median(t) for n, t in times.items()}
    return res

def main(epochs:int=8, seeds:int=3, rounds:int=40, threads:int=1, lam:float=1e-3):
    if threads: torch.set_num_threads(threads)
    runs = [(n, t) for t in TARGETS for n in CRITERIA if supports(n, TARGETS[t][0])]
    train('Magnitude', 'filters 50%', 0, 1, lam)  # warm-up (allocator, first-call overheads)
    res = {r: [] for r in runs}
    for s in range(seeds):
        for r in (runs if s % 2 == 0 else runs[::-1]): res[r].append(train(*r, s, epochs, lam))
    costs = step_costs(rounds, threads)
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
    print(f"digits CNN, fit_one_cycle({epochs}, 1e-2) with PruneCallback(global, agp(0.3, 0.8)), {seeds} seeds, "
          f"torch threads={torch.get_num_threads()}, load average at the end {load:.1f} on {os.cpu_count()} CPUs; "
          f"slimming lam={lam:g}")
    head = f"{'criterion':<22}" + ''.join(f"{t + ' accuracy':>22}{'fit cpu':>9}" for t in TARGETS)
    print(head); print('-' * len(head))
    ratio = lambda r: statistics.median(x[0] / b[0] for x, b in zip(res[r], res[('Magnitude', r[1])]))
    for n in CRITERIA:
        line = f"{n:<22}"
        for t in TARGETS:
            if (n, t) not in res: line += f"{'n/a':>22}{'':>9}"; continue
            acc = [x[1] for x in res[(n, t)]]
            sd = statistics.stdev(acc) if len(acc) > 1 else 0.
            line += f"{statistics.mean(acc):>15.4f} ±{sd:.3f}{ratio((n, t)):>8.3f}x"
        print(line)
    sp = {t: statistics.mean(x[2] for r in runs if r[1] == t for x in res[r]) for t in TARGETS}
    print("fit cpu: CPU time of the fit / Magnitude's (same seed and target), median over seeds; sparsity of the pruned "
          "layers' weights: " + ', '.join(f"{t}: {v:.2%}" for t, v in sp.items()))
    print()
    print(f"cost of collecting statistics: median CPU time of a training step (Filter(), statistics folded after each "
          f"backward), {rounds} rounds, one step of each criterion in turn")
    labels = list(costs)
    print(f"{'criterion':<22}" + ''.join(f"{l:>28}" for l in labels) + '  goal (every model)')
    for n in costs[labels[0]]:
        rs = [costs[l][n] / costs[l]['Magnitude'] for l in labels]
        cells = ''.join(f"{costs[l][n] * 1e3:>14.2f} ms {r:>8.3f}x" for l, r in zip(labels, rs))
        verdict = '' if n == 'Magnitude' else f"  <= {GOAL:.2f}x: {'met' if max(rs) <= GOAL else 'NOT met'}"
        print(f"{n:<22}{cells}{verdict}")

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--epochs', type=int, default=8)
    ap.add_argument('--seeds', type=int, default=3)
    ap.add_argument('--rounds', type=int, default=40, help='training steps of each criterion in the cost table')
    ap.add_argument('--threads', type=int, default=1, help='torch threads (0: leave the default; 1 suits this tiny CNN)')
    ap.add_argument('--lam', type=float, default=1e-3, help="slimming penalty of 'BNScale + slimming'")
    a = ap.parse_args()
    main(a.epochs, a.seeds, a.rounds, a.threads, a.lam)
