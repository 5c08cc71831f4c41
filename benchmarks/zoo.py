"""How long does the documented path take on each torchvision model, what does it remove, and how does that compare with
Torch-Pruning?

Per model (random init, eval, 1x3x224x224, 299 for inception_v3, BatchNorm statistics from a few random batches so that
activations stay O(1)) and context: seconds to build the coupled units (`Sparsifier(model, Filter(), Magnitude(),
context, example_inputs=x)`), to `prune(0.3)` + `apply_masks()`, to `compact(model, x)`; params and MACs
(`tp.utils.count_ops_and_params`) before and after; the relative output difference masked vs compacted; and beside it
the params ratio of Torch-Pruning's own `MagnitudePruner` (`BasePruner`, `GroupMagnitudeImportance(p=2)`,
`pruning_ratio=0.3`, the classifier ignored) on the same model, or its error. Each model runs in its own subprocess
with a timeout, one thread, so a hang or a crash costs one row.

Run: python benchmarks/zoo.py [--models resnet18,convnext_tiny] [--size 224] [--timeout 240] [--contexts local,global]
"""
import argparse, copy, json, os, subprocess, sys, time, warnings

CNNS = ['alexnet', 'convnext_tiny', 'densenet121', 'efficientnet_b0', 'efficientnet_v2_s', 'googlenet', 'inception_v3',
        'mnasnet0_5', 'mobilenet_v2', 'mobilenet_v3_small', 'regnet_x_400mf', 'regnet_y_400mf', 'resnet18',
        'resnext50_32x4d', 'shufflenet_v2_x0_5', 'squeezenet1_0', 'vgg11_bn', 'wide_resnet50_2']

def _model(name, size):
    import torch, torch.nn as nn, torchvision
    torch.manual_seed(0)
    kw = dict(aux_logits=False, init_weights=False) if name in ('googlenet', 'inception_v3') else {}
    m = getattr(torchvision.models, name)(weights=None, **kw)
    for mod in m.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm): mod.momentum = None
    m.train()
    with torch.no_grad(): m(torch.randn(2, 3, size, size))
    return m.eval()

def _classifier(m):
    import torch.nn as nn
    return [l for l in m.modules() if isinstance(l, (nn.Linear, nn.Conv2d))][-1]

def one(name, size, contexts):
    "The measurements of one model, as a dict (run in a subprocess)"
    import torch, torch_pruning as tp
    from fastprune.granularity import Filter
    from fastprune.criteria import Magnitude
    from fastprune.sparsifier import Sparsifier
    from fastprune.compact import compact
    warnings.simplefilter('ignore')
    torch.set_num_threads(1)
    size = 299 if name == 'inception_v3' and size == 224 else size
    x = torch.randn(1, 3, size, size)
    dense = _model(name, size)
    macs0, params0 = tp.utils.count_ops_and_params(dense, x)
    res = dict(model=name, size=size, params0=params0, macs0=macs0)
    try:
        m = copy.deepcopy(dense)
        tp.pruner.BasePruner(m, x, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.3,
                             ignored_layers=[_classifier(m)]).step()
        res['tp'] = tp.utils.count_ops_and_params(m, x)[1] / params0
    except Exception as e: res['tp'] = f"{type(e).__name__}: {str(e)[:60]}"
    for ctx in contexts:
        r = res[ctx] = {}
        try:
            m = copy.deepcopy(dense)
            t = time.perf_counter(); sp = Sparsifier(m, Filter(), Magnitude(), context=ctx, example_inputs=x); r['units'] = time.perf_counter() - t
            t = time.perf_counter(); sp.prune(0.3); sp.apply_masks(); r['prune'] = time.perf_counter() - t
            with torch.no_grad(): ref = m(x)
            t = time.perf_counter(); small = compact(m, x); r['compact'] = time.perf_counter() - t
            with torch.no_grad(): out = small(x)
            r['err'] = float((ref - out).abs().max()) / max(1., float(ref.abs().max()))
            macs, params = tp.utils.count_ops_and_params(small, x)
            r['params'], r['macs'] = params / params0, macs / macs0
        except Exception as e: r['error'] = f"{type(e).__name__}: {str(e)[:80]}"
    return res

def _row(res, ctx):
    r = res.get(ctx, {})
    tpv = res['tp'] if isinstance(res['tp'], str) else f"{res['tp']:.3f}"
    if 'error' in r or 'params' not in r:
        return f"| {res['model']} | {ctx} | {res['params0']/1e6:.2f} | {res['macs0']/1e9:.2f} | - | - | - | - | - | {tpv} | {r.get('error', '?')} |"
    return (f"| {res['model']} | {ctx} | {res['params0']/1e6:.2f} | {res['macs0']/1e9:.2f} | {r['params']:.3f} | {r['macs']:.3f} "
            f"| {r['units']:.1f} | {r['prune']:.1f} | {r['compact']:.1f} | {tpv} | {r['err']:.1e} |")

def main(models=None, size=224, timeout=240, contexts=('local', 'global')):
    models = models or CNNS
    print("| model | context | params (M) | GMACs | params after | MACs after | units s | prune s | compact s | Torch-Pruning params | rel. diff / error |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in models:
        cmd = [sys.executable, __file__, '--one', name, '--size', str(size), '--contexts', ','.join(contexts)]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, 'OMP_NUM_THREADS': '1'})
            line = next((l for l in p.stdout.splitlines() if l.startswith('{')), None)
            if line is None: print(f"| {name} | - | - | - | - | - | - | - | - | - | crashed (rc {p.returncode}): {p.stderr.strip().splitlines()[-1:] } |"); continue
            res = json.loads(line)
            for ctx in contexts: print(_row(res, ctx), flush=True)
        except subprocess.TimeoutExpired: print(f"| {name} | - | - | - | - | - | - | - | - | - | no answer in {timeout} s |", flush=True)

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--models', default=None, help='comma-separated torchvision model names (default: one CNN per family)')
    ap.add_argument('--size', type=int, default=224)
    ap.add_argument('--timeout', type=int, default=240)
    ap.add_argument('--contexts', default='local,global')
    ap.add_argument('--one', default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    ctxs = tuple(a.contexts.split(','))
    if a.one: print(json.dumps(one(a.one, a.size, ctxs)))
    else: main(a.models.split(',') if a.models else None, a.size, a.timeout, ctxs)
