"""Does physical compaction turn filter pruning into a real CPU speed-up, and how does it compare with Torch-Pruning?

torchvision resnet18 (random weights), input 8x3x224x224, eval mode, 2 threads. Two prunings of the same dense model,
both removing 50% of the channels of every coupled group, the classifier left alone:
- fastprune: `Sparsifier(model, Filter(), context='local', example_inputs=x)` (the defaults otherwise: Magnitude L1,
  mean-normalised scores) + `prune(0.5)` + `compact(model, x)`;
- Torch-Pruning's own pruner: `tp.pruner.BasePruner(model, x, importance=GroupMagnitudeImportance(p=2),
  pruning_ratio=0.5, global_pruning=False, ignored_layers=[model.fc]).step()` (its `MagnitudePruner`).
Printed: both architectures layer by layer (output channels of every convolution), parameters and MACs
(`fastprune.metrics.count_flops`), the theoretical speed-up (MAC ratio), and the latency of dense / Torch-Pruning /
fastprune alternated in one process (`fastprune.metrics.measure_latency`: medians, with the quartiles of the
run-by-run speed-ups as a noise gauge) in two forms, the same transformation applied to all three models:
- `eager`: as returned, BatchNorm separate;
- `bn-folded`: `torch.fx.experimental.optimization.fuse` folds every BatchNorm into its convolution.
With `--all-forms`, also channels-last, TorchScript (trace + freeze + optimize_for_inference) and inductor
(`torch.compile`, freezing=True; needs a C++ compiler, skipped with the reason when it fails).
Goals: fastprune's measured speed-up >= Torch-Pruning's in the same run (within the printed noise), and >= 0.92 of
the MAC ratio in the BN-folded form. A bound is printed beside the second: the speed-up the dense profile allows if
the convolutions and linears shrank exactly by the MAC ratio and every other operator by the activation ratio (the
most any pruner removing these channels can reach in this form). The last table profiles the BN-folded dense and fastprune models: time per
operator kind, so what is left between the measured and the theoretical speed-up can be read off (MACs count
convolutions and linears only; pooling, ReLU and the residual adds shrink with the channel count, 2x, not 4x).
The process CPU time per run is printed too: on a shared, loaded machine it is a steadier measure than the wall clock.

Run: python benchmarks/compact_speed.py [--runs 21] [--threads 2] [--all-forms]
(on a machine shared with other jobs, prefix OMP_WAIT_POLICY=PASSIVE so that waiting threads do not spin)
"""
import argparse, copy, os, statistics, warnings
import torch, torchvision
from torch.fx.experimental.optimization import fuse
import torch_pruning as tp
from fastprune.sparsifier import Sparsifier
from fastprune.granularity import Filter
from fastprune.compact import compact
from fastprune.metrics import count_flops, measure_latency

def fastprune_compact(dense, x):
    m = copy.deepcopy(dense)
    Sparsifier(m, Filter(), context='local', example_inputs=x).prune(0.5)
    return compact(m, x).eval()

def torch_pruning(dense, x):
    m = copy.deepcopy(dense)
    imp = tp.importance.GroupMagnitudeImportance(p=2)
    tp.pruner.BasePruner(m, x, importance=imp, pruning_ratio=0.5, global_pruning=False, ignored_layers=[m.fc]).step()
    return m.eval()

def torchscript(model, x):
    "trace, freeze and optimise for inference (oneDNN layouts, fused conv+ReLU)"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, x)))

def inductor(model, x):
    "torch.compile with frozen weights, compiled by one call"
    import torch._inductor.config as cfg
    cfg.freezing = True
    compiled = torch.compile(model)
    with torch.no_grad(): compiled(x)
    return compiled

def op_times(models, x, rounds=5, per_round=3):
    "Median over alternated profiling rounds of the CPU time per forward pass (ms) of each operator, for each of `models`"
    from torch.profiler import profile
    out = {k: [] for k in models}
    with torch.no_grad():
        for r in range(rounds):
            for k in (list(models) if r % 2 == 0 else list(models)[::-1]):
                with profile() as prof:
                    for _ in range(per_round): models[k](x)
                out[k].append({e.key: e.self_cpu_time_total / per_round / 1000 for e in prof.key_averages()})
    keys = {op for runs in out.values() for run in runs for op in run}
    return {k: {op: statistics.median(run.get(op, 0.) for run in runs) for op in keys} for k, runs in out.items()}

def _is_mac_op(op:str) -> bool:
    "Profiler operator names whose work the MAC count covers (convolutions, matrix products)"
    return 'conv' in op or op.split('::')[-1] in ('addmm', 'mm', 'bmm', 'matmul', 'linear')

def conv_outputs(model, x):
    "Elements written by the model's convolutions on `x` (what the pooling, activation and add operators read)"
    tot, hs = [0], [m.register_forward_hook(lambda m, i, o: tot.__setitem__(0, tot[0] + o.numel()))
                    for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.no_grad(): model(x)
    finally:
        for h in hs: h.remove()
    return tot[0]

def main(runs=21, warmup=3, threads=2, bs=8, size=224, all_forms=False):
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    x = torch.randn(bs, 3, size, size)
    dense = torchvision.models.resnet18(weights=None).eval()
    models = {'dense': dense, 'Torch-Pruning': torch_pruning(dense, x[:1]), 'fastprune': fastprune_compact(dense, x[:1])}
    macs = {k: count_flops(m, x).total / 2 for k, m in models.items()}
    n = lambda m: sum(p.numel() for p in m.parameters())
    print(f"resnet18, input {tuple(x.shape)}, eval, {threads} threads, {runs} alternated runs, torch {torch.__version__}, "
          f"torch-pruning {tp.__version__}")
    convs = [k for k, mod in dense.named_modules() if isinstance(mod, torch.nn.Conv2d)]
    mods = {k: dict(m.named_modules()) for k, m in models.items()}
    print(f"\n{'conv':<24}" + ''.join(f"{k:>15}" for k in models) + "   (output channels)")
    for c in convs: print(f"{c:<24}" + ''.join(f"{mods[k][c].out_channels:>15}" for k in models))
    same = all(mods['Torch-Pruning'][c].weight.shape == mods['fastprune'][c].weight.shape for c in convs)
    print(f"same architecture: {same}")
    print(f"\n{'':<16}" + ''.join(f"{k:>15}" for k in models))
    print(f"{'params (M)':<16}" + ''.join(f"{n(m)/1e6:>15.3f}" for m in models.values()))
    print(f"{'MACs (G)':<16}" + ''.join(f"{v/1e9:>15.3f}" for v in macs.values()))
    print(f"{'MAC ratio':<16}" + ''.join(f"{macs['dense']/v:>15.2f}" for v in macs.values()))
    cl = lambda m: fuse(m).to(memory_format=torch.channels_last)
    forms = {'eager': lambda m: m, 'bn-folded': fuse}
    if all_forms: forms.update({'folded+NHWC': cl, 'TorchScript': lambda m: torchscript(m, x), 'inductor': lambda m: inductor(m, x)})
    res = {}
    for form, make in forms.items():
        xx = x.to(memory_format=torch.channels_last) if form == 'folded+NHWC' else x
        try: fm = {k: make(m) for k, m in models.items()}
        except Exception as e:
            print(f"{form:11s} skipped: {type(e).__name__}: {str(e).splitlines()[0][:120]}"); continue
        with torch.no_grad():
            for k in models: assert (fm[k](xx) - models[k](x)).abs().max().item() < 1e-3, f"{form} changed {k}'s outputs"
        lat = measure_latency(fm, xx, n_runs=runs, warmup=warmup, threads=threads).df.set_index('model')
        res[form] = (fm, lat)
        print(f"\n{form}: latency (median ms), speed-up over dense (run by run q1-q3), measured / MAC ratio, CPU ms")
        for k in models:
            r, theo = lat.loc[k], macs['dense'] / macs[k]
            print(f"  {k:<15}{r.median_ms:>9.1f} ms  {r.speedup:>5.2f}x ({r.speedup_q1:.2f}-{r.speedup_q3:.2f})  "
                  f"{r.speedup/theo:>6.3f}  {r.cpu_ms:>9.1f} ms")
        f, t = lat.loc['fastprune'], lat.loc['Torch-Pruning']
        print(f"  fastprune / Torch-Pruning speed-up: {f.speedup / t.speedup:.3f} (>= 1 within noise is the goal)")
    if 'bn-folded' in res:
        fm, lat = res['bn-folded']
        theo = macs['dense'] / macs['fastprune']
        ops = op_times({k: fm[k] for k in ('dense', 'fastprune')}, x)
        tot = {k: sum(v.values()) for k, v in ops.items()}
        mac = sum(t for op, t in ops['dense'].items() if _is_mac_op(op))
        act = conv_outputs(fm['dense'], x) / conv_outputs(fm['fastprune'], x)
        bound = tot['dense'] / (mac / theo + (tot['dense'] - mac) / act)
        meas = lat.loc['fastprune'].speedup
        print(f"\nbound: if the convolutions and linears shrank exactly by the MAC ratio ({theo:.2f}x) and every other operator "
              f"by the activation ratio ({act:.2f}x, convolution outputs dense / fastprune), the dense profile below "
              f"({mac/tot['dense']:.1%} of its time in MAC operators) allows at most {bound:.2f}x = {bound/theo:.3f} of the MAC ratio "
              f"for any pruner removing these channels; measured / bound: {meas/bound:.3f}")
        print(f"goal: bn-folded fastprune measured/theoretical >= 0.92: {meas/theo:.3f}"
              + (f" (unreachable in this form: the bound is {bound/theo:.3f})" if bound/theo < 0.92 else ""))
        print(f"\nbn-folded, profiled (self CPU ms per forward, median of alternated rounds): total dense {tot['dense']:.1f}, "
              f"fastprune {tot['fastprune']:.1f}")
        print(f"  {'operator':<34}{'dense':>9}{'fastprune':>11}{'speed-up':>10}{'share of fastprune':>20}")
        for op in sorted(ops['dense'], key=lambda o: -ops['dense'][o])[:10]:
            d, c = ops['dense'][op], ops['fastprune'].get(op, 0.)
            print(f"  {op:<34}{d:>9.2f}{c:>11.2f}{(d/c if c else float('nan')):>9.2f}x{c/tot['fastprune']:>19.1%}")
    print(f"\nload average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (wall-clock figures need an otherwise idle machine)")

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--runs', type=int, default=21)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--all-forms', action='store_true', help='also channels-last, TorchScript and inductor')
    a = p.parse_args()
    main(runs=a.runs, threads=a.threads, all_forms=a.all_forms)
