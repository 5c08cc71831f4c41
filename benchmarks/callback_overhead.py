"""Training-time overhead of `PruneCallback` with its defaults (AGP to 90%, Weight(), Magnitude(), local) on the digits
CNN and on a torchvision ResNet-18 at 64x64 inputs (fewer, larger layers), measured side by side in one run.
Goal: <= 1.02x the dense training time with the defaults.

Dense and pruned trainings alternate (their order flips every repeat); wall-clock and process CPU times are
recorded for each run, and the ratios of the medians and of the minima are printed (on a machine shared with other
jobs, the CPU time of this process and the minimum are the least disturbed figures). A third variant recomputes
masks whenever the target moves (`update_every=0`, about every batch with `Weight()` groups: what fasterai's
callback does). The final validation accuracy and sparsity of each variant are printed too, and so is the time spent
inside the callback's own hooks (timed around each call) as a fraction of the dense training time: the cost of the
callback without the machine's noise, which on a shared 2-core machine moves the dense fit by +-5% between repeats.
That time is split into its two parts: the mask updates (at most 16 on the schedule's grid and the final one, each a fixed
cost, printed in dense training steps) and the rest (the masks re-applied after each step: a constant fraction of
training), which gives the shortest fit for which the defaults stay within 1.02x.

    python benchmarks/callback_overhead.py [--epochs 5] [--repeats 9] [--threads 1] [--resnet-epochs 5] [--resnet-repeats 3]
"""
import argparse, collections, math, statistics, time, warnings
import torch, torchvision
from torch import nn
from fastai.callback.all import *
from fastprune.data import digits_dls, digits_cnn, digits_learner
from fastprune.callback import PruneCallback

warnings.filterwarnings('ignore')

VARIANTS = {'dense': ('dense (no callback)', lambda: None),
            'agp90': ('PruneCallback AGP 90% (defaults)', lambda: PruneCallback(0.9, report=False)),  # agp(0, 0.8), update_every=1/16
            'agp90_0': ('AGP 90%, update_every=0', lambda: PruneCallback(0.9, update_every=0, report=False))}

def digits_resnet18():
    "torchvision's ResNet-18 for 1-channel 64x64 digits"
    m = torchvision.models.resnet18(num_classes=10)
    m.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    return m

MODELS = {'digits CNN': (digits_cnn, 8), 'ResNet-18, 64x64 inputs': (digits_resnet18, 64)}

HOOKS = ('before_fit', 'before_train', 'before_batch', 'after_backward', 'after_step', 'after_train', 'after_fit')

Run = collections.namedtuple('Run', 'wall cpu accuracy sparsity hooks_s events_s n_events n_steps')

def _timed(f, add):
    def g(*a, **k):
        t = time.perf_counter()
        try: return f(*a, **k)
        finally: add(time.perf_counter() - t)
    return g

def _time_hooks(cb):
    "Wrap `cb`'s event methods (fastai calls them by name on the instance) to add their durations to `cb.hook_s`, and its mask updates (`_prune`, called from inside the hooks) to `cb.event_s`"
    cb.hook_s, cb.event_s, cb.n_events = 0., 0., 0
    def add_hook(d): cb.hook_s += d
    def add_event(d): cb.event_s += d; cb.n_events += 1
    for h in HOOKS: setattr(cb, h, _timed(getattr(cb, h), add_hook))
    cb._prune = _timed(cb._prune, add_event)

def train(variant, epochs, seed=0, model='digits CNN') -> Run:
    "Fit a fresh seeded model with `fit_one_cycle`: wall and CPU s, valid accuracy, sparsity, s inside the hooks, s in mask updates, their number, training steps"
    torch.manual_seed(seed)
    cb = VARIANTS[variant][1]()
    if cb is not None: _time_hooks(cb)
    make, size = MODELS[model]
    dls = digits_dls(bs=64, size=size)
    for dl in dls.loaders: dl.fake_l.num_workers = 0  # in-memory tensors: no worker processes, only training is timed
    learn = digits_learner(make(), dls, cbs=cb)
    learn.remove_cb(ProgressCallback)
    learn.logger = lambda *a, **k: None
    t, c = time.perf_counter(), time.process_time()
    learn.fit_one_cycle(epochs, 1e-2)
    t, c = time.perf_counter() - t, time.process_time() - c
    if cb is None: return Run(t, c, float(learn.recorder.values[-1][2]), 0., 0., 0., 0, learn.train_iter)
    return Run(t, c, float(learn.recorder.values[-1][2]), cb.sparsifier.sparsity(), cb.hook_s, cb.event_s, cb.n_events, learn.train_iter)

def cost_model(dense_wall, steps, hooks_s, events_s, n_events, goal=0.02) -> dict:
    """The callback's cost as `per_step` (a fraction of training that does not depend on its length: the masks
    re-applied after each step) plus `n_events` mask updates of `event_steps` dense training steps each (a fixed
    cost: the schedule makes 16 updates whatever the length of the fit). `min_steps`: the shortest fit, in steps,
    whose overhead is at most `goal` (None if the per-step part alone exceeds it)."""
    step_s = dense_wall / steps
    per_step, event_steps = (hooks_s - events_s) / dense_wall, (events_s / n_events / step_s if n_events else 0.)
    room = goal - per_step
    return dict(per_step=per_step, event_steps=event_steps,
                min_steps=math.ceil(n_events * event_steps / room) if room > 0 else None)

def bench(model, epochs, repeats, names):
    for v in names: train(v, 1, model=model)  # warm-up (allocator, first-call overheads)
    res = {v: [] for v in names}
    for r in range(repeats):
        for v in (names if r % 2 == 0 else names[::-1]): res[v].append(train(v, epochs, model=model))
    col = lambda v, i: [x[i] for x in res[v]]
    stat = {v: dict(wall=statistics.median(col(v, 0)), wall_min=min(col(v, 0)),
                    cpu=statistics.median(col(v, 1)), cpu_min=min(col(v, 1))) for v in names}
    print(f"\n{model}, fit_one_cycle({epochs}, 1e-2), bs 64, {repeats} alternating repeats, torch threads={torch.get_num_threads()}")
    print(f"{'variant':<34}{'wall med':>9}{'ratio':>8}{'wall min':>10}{'ratio':>8}{'cpu med':>9}{'ratio':>8}{'in hooks':>10}{'accuracy':>10}{'sparsity':>10}")
    d = stat['dense']
    for v in names:
        s = stat[v]
        print(f"{VARIANTS[v][0]:<34}{s['wall']:>8.2f}s{s['wall']/d['wall']:>7.3f}x{s['wall_min']:>9.2f}s"
              f"{s['wall_min']/d['wall_min']:>7.3f}x{s['cpu']:>8.2f}s{s['cpu']/d['cpu']:>7.3f}x"
              f"{statistics.median(col(v, 4))/d['wall']:>9.1%} "
              f"{statistics.median(col(v, 2)):>10.4f}{res[v][-1][3]:>10.4f}")
    s, h = stat['agp90'], statistics.median(col('agp90', 4))
    print(f"overhead of the callback (defaults): {s['wall']/d['wall']:.3f}x wall (median), {s['wall_min']/d['wall_min']:.3f}x "
          f"wall (min), {s['cpu']/d['cpu']:.3f}x CPU (median); inside its hooks {h:.3f} s = {1 + h/d['wall']:.3f}x; goal <= 1.02x", flush=True)
    ev, n_ev, steps = statistics.median(col('agp90', 5)), res['agp90'][-1].n_events, res['dense'][-1].n_steps
    fit = cost_model(d['wall'], steps, h, ev, n_ev)
    print(f"  of which: {n_ev} mask updates, {1e3*ev/max(n_ev, 1):.1f} ms each = {fit['event_steps']:.3f} dense training steps "
          f"(a fixed cost), and {fit['per_step']:.2%} of every step (masks re-applied after the optimizer); this fit has {steps} steps, "
          + (f"the defaults stay within 1.02x from {fit['min_steps']} steps on" if fit['min_steps'] else "the per-step part alone exceeds 2%"), flush=True)

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--epochs', type=int, default=5)
    ap.add_argument('--repeats', type=int, default=9)
    ap.add_argument('--resnet-epochs', type=int, default=5, help='the same fit_one_cycle(5) as the digits CNN (110 steps)')
    ap.add_argument('--resnet-repeats', type=int, default=3)
    ap.add_argument('--threads', type=int, default=1, help='torch threads (0: leave the default; 1 suits the tiny CNN)')
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    bench('digits CNN', a.epochs, a.repeats, list(VARIANTS))
    if a.resnet_repeats: bench('ResNet-18, 64x64 inputs', a.resnet_epochs, a.resnet_repeats, ['dense', 'agp90'])

if __name__ == '__main__': main()
