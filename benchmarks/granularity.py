"""Cost of grouping a whole model: `reduce` + `expand` of every granularity over every conv/linear layer of a
torchvision model, as a ratio to one elementwise pass (`w.abs()`) over the same weights, measured in the same run.

    python benchmarks/granularity.py [resnet50] [--threads 1] [--repeats 3]
"""
import argparse, time, torch, torchvision
from torch import nn
from fastprune.granularity import Weight, Kernel, Filter, Channel, NM

def best_of(f, repeats):
    ts = []
    for _ in range(repeats):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return min(ts)

def main():
    p = argparse.ArgumentParser()
    p.add_argument('model', nargs='?', default='resnet50')
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--repeats', type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model = getattr(torchvision.models, a.model)(weights=None)
    mods = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    scores = {m: m.weight.detach().abs() for m in mods}
    base = best_of(lambda: [m.weight.detach().abs() for m in mods], a.repeats)
    n = sum(m.weight.numel() for m in mods)
    print(f"{a.model}: {len(mods)} layers, {n/1e6:.1f}M weights, baseline w.abs() pass: {base*1e3:.1f} ms ({a.threads} thread(s))")
    print(f"{'granularity':<14}{'reduce/base':>12}{'expand/base':>12}")
    for g in (Weight(), Kernel(), Filter(), Channel(), NM(2, 4)):
        ms = [m for m in mods if not isinstance(g, NM) or m.weight[0].numel() % g.m == 0]
        keeps = {m: g.reduce(scores[m], m) > 0 for m in ms}
        r = best_of(lambda: [g.reduce(scores[m], m) for m in ms], a.repeats)
        e = best_of(lambda: [g.expand(keeps[m], m, scores[m]) for m in ms], a.repeats)
        print(f"{g!r:<14}{r/base:>12.2f}{e/base:>12.2f}")

if __name__ == '__main__': main()
