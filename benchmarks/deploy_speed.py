"""Does the speed-up of a compacted model survive in ONNX Runtime?

torchvision resnet18 (random weights), input 8x3x224x224, 2 threads. 50% of the channels of every dependency-coupled
unit are pruned (`Sparsifier(model, Filter(), context='local', example_inputs=x).prune(0.5)`, so the residual streams
lose half their channels too), then `compact` removes them. Dense and compacted models are exported with
`fastprune.deploy.export_onnx` (default exporter, verified against PyTorch) and timed with
`fastprune.metrics.measure_latency`: dense and compacted in ONNX Runtime and, for reference, in PyTorch (eager), all
four alternated run after run in this process, the same number of threads for both runtimes.

Printed: MACs before/after (`fastprune.metrics.count_flops`) and their ratio (the theoretical speed-up), the measured
ONNX Runtime speed-up of the compacted model over the dense one (median latencies, with the quartiles of the run-by-run
speed-ups as a noise gauge, and the same from process CPU time, steadier on a loaded machine), and the measured speed-up
as a fraction of the MAC ratio. Goal: >= 0.9.

When the goal is not reached the script says where the time goes: ONNX Runtime's own profiler (alternated profiled
rounds) gives the kernel time per operator type, dense vs compacted, and the speed-up of the convolutions alone against
the MAC ratio of the convolutions. MACs count convolutions and the classifier only; the other operators (max-pooling,
the layout reorders of ONNX Runtime's blocked NCHWc kernels, global pooling) are memory-bound and shrink with the channel
count, 2x here instead of 4x, and a convolution with half the input and output channels does a quarter of the MACs but
runs its kernel less efficiently. (Every channel count here is a multiple of 16, which ONNX Runtime's blocked CPU
kernels need; counts that are not, see `fastprune.deploy.channel_misfits`, lose much of the speed-up.)

Run: python benchmarks/deploy_speed.py [--runs 21] [--threads 2]   (needs `pip install 'fastprune[deploy]'`)
"""
import argparse, json, os, statistics, tempfile, warnings
from collections import defaultdict
# PyTorch's OpenMP threads spin-wait between operations unless told otherwise, which on a shared machine burns the cores
# the other runtime needs; ONNX Runtime's sessions here do not spin either (`fastprune.deploy.ort_session`). Read by
# libgomp when torch loads, so set before the import (an explicit OMP_WAIT_POLICY in the environment wins; imported as a
# module, e.g. by the tests, torch is already loaded and the environment is left alone)
if __name__ == '__main__': os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
import torch, torchvision
from fastprune.sparsifier import Sparsifier
from fastprune.granularity import Filter
from fastprune.compact import compact
from fastprune.metrics import count_flops, module_flops, measure_latency
from fastprune.deploy import export_onnx, ort_session, channel_misfits

GOAL = 0.9

def op_profile(paths, x, threads, rounds=6, per_round=3):
    """{name: {op type: ms per forward pass}} from ONNX Runtime's profiler, rounds alternated between the models;
    the medians over rounds of the summed kernel times per operator type"""
    import onnxruntime as ort
    sess = {}
    for k, p in paths.items():
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads, so.enable_profiling = threads, 1, True
        so.add_session_config_entry('session.intra_op.allow_spinning', '0')
        so.profile_file_prefix = os.path.join(os.path.dirname(p), f'profile_{k}')
        sess[k] = ort.InferenceSession(p, so, providers=['CPUExecutionProvider'])
    feed = {'input': x.numpy()}
    for k, s in sess.items(): s.run(None, feed)                                   # warm-up, profiled too: dropped below
    for r in range(rounds):
        for k in (list(sess) if r % 2 == 0 else list(sess)[::-1]):
            for _ in range(per_round): sess[k].run(None, feed)
    out = {}
    for k, s in sess.items():
        events = json.load(open(s.end_profiling()))
        runs = [e for e in events if e.get('cat') == 'Session' and e['name'] == 'model_run']
        nodes = [e for e in events if e.get('cat') == 'Node' and e['name'].endswith('_kernel_time')]
        per_run = []                                                              # op type -> ms, for each run
        for run in runs[1:]:                                                      # the first is the warm-up
            t0, t1, d = run['ts'], run['ts'] + run['dur'], defaultdict(float)
            for e in nodes:
                if t0 <= e['ts'] <= t1: d[e['args']['op_name']] += e['dur']/1e3
            per_run.append(d)
        ops = {o for d in per_run for o in d}
        out[k] = {o: statistics.median(d.get(o, 0.) for d in per_run) for o in ops}
    return out

def main(runs=21, warmup=3, threads=2, bs=8, size=224, profile=None):
    "profile: None = only when the goal is missed, True/False = always/never"
    torch.manual_seed(0)
    x = torch.randn(bs, 3, size, size)
    dense = torchvision.models.resnet18(weights=None).eval()
    masked = torchvision.models.resnet18(weights=None).eval()
    masked.load_state_dict(dense.state_dict())
    Sparsifier(masked, Filter(), context='local', example_inputs=x[:1]).prune(0.5)
    small = compact(masked, x[:1]).eval()
    m_dense, m_small = count_flops(dense, x).total / 2, count_flops(small, x).total / 2
    theo = m_dense / m_small
    import onnxruntime as ort
    print(f"resnet18, input {tuple(x.shape)}, {threads} threads, {runs} alternated runs, torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    print(f"MACs       dense {m_dense/1e9:7.2f} G  compact {m_small/1e9:7.2f} G  MAC ratio (theoretical speed-up) {theo:.2f}x")
    print(f"convolutions whose channel counts ONNX Runtime's blocked kernels cannot take (`channel_misfits`): "
          f"dense {len(channel_misfits(dense))}, compact {len(channel_misfits(small))}")
    with tempfile.TemporaryDirectory() as tmp:
        fd, fc = export_onnx(dense, x[:1], os.path.join(tmp, 'dense.onnx')), export_onnx(small, x[:1], os.path.join(tmp, 'compact.onnx'))
        print(f"ONNX files dense {fd.size/1e6:7.2f} MB compact {fc.size/1e6:7.2f} MB  ({fc['exporter']} exporter; ONNX Runtime "
              f"matches PyTorch to {max(fd['max_diff'], fc['max_diff']):.1e})")
        lat = measure_latency({'dense ORT': fd, 'compact ORT': fc, 'dense PyTorch': dense, 'compact PyTorch': small}, x,
                              n_runs=runs, warmup=warmup, threads=threads)
        df = lat.to_pandas().set_index('model')
        for rt in ('ORT', 'PyTorch'):
            d, c = df.loc[f'dense {rt}'], df.loc[f'compact {rt}']
            base = df.loc['dense ORT'] if rt == 'ORT' else df.loc['dense PyTorch']
            sw, sc = base.median_ms / c.median_ms, base.cpu_ms / c.cpu_ms
            q = [b/t for b, t in zip(lat.times[f'dense {rt}'], lat.times[f'compact {rt}'])]
            q1, _, q3 = statistics.quantiles(q, n=4, method='inclusive') if len(q) > 1 else (q[0],)*3
            print(f"{rt:7s}    latency dense {d.median_ms:6.1f} ms  compact {c.median_ms:6.1f} ms  speed-up {sw:.2f}x "
                  f"(run by run {q1:.2f}-{q3:.2f})  measured/MAC ratio {sw/theo:.3f} | CPU time {d.cpu_ms:6.1f} / "
                  f"{c.cpu_ms:6.1f} ms  ratio {sc/theo:.3f}")
        s = df.loc['dense ORT'].median_ms / df.loc['compact ORT'].median_ms
        frac = s / theo
        print(f"ONNX Runtime speed-up of the compacted model: {s:.2f}x = {frac:.3f} of the MAC ratio   goal: >= {GOAL}   "
              f"{'reached' if frac >= GOAL else 'NOT reached'}")
        print(f"PyTorch vs ONNX Runtime: dense {df.loc['dense PyTorch'].median_ms/df.loc['dense ORT'].median_ms:.2f}x, "
              f"compact {df.loc['compact PyTorch'].median_ms/df.loc['compact ORT'].median_ms:.2f}x "
              "(PyTorch latency / ONNX Runtime latency)")
        if profile or (profile is None and frac < GOAL):
            print("\nwhere the time goes (ONNX Runtime profiler, kernel time per operator type, ms per forward pass, "
                  "medians of alternated profiled runs):")
            prof = op_profile({'dense': str(fd), 'compact': str(fc)}, x, threads)
            pd_, pc = prof['dense'], prof['compact']
            td, tc = sum(pd_.values()), sum(pc.values())
            print(f"  {'operator':22s} {'dense':>9s} {'compact':>9s} {'speed-up':>9s} {'share dense':>12s} {'share compact':>14s}")
            for o in sorted(set(pd_) | set(pc), key=lambda o: -pd_.get(o, 0.)):
                a, b = pd_.get(o, 0.), pc.get(o, 0.)
                print(f"  {o:22s} {a:9.2f} {b:9.2f} {a/b if b else float('nan'):8.2f}x {a/td:12.1%} {b/tc:14.1%}")
            print(f"  {'all kernels':22s} {td:9.2f} {tc:9.2f} {td/tc:8.2f}x")
            conv = lambda m: sum(f for n, f in module_flops(m, x).items() if isinstance(m.get_submodule(n), torch.nn.Conv2d))
            cd, cc = conv(dense), conv(small)
            kd, kc = pd_.get('Conv', 0.), pc.get('Conv', 0.)
            if kc:
                print(f"convolutions alone: kernels {kd/kc:.2f}x faster for a MAC ratio of {cd/cc:.2f}x ({kd/kc/(cd/cc):.3f} "
                      f"of it); all other kernels {(td-kd)/(tc-kc):.2f}x faster, {(tc-kc)/tc:.1%} of the compacted model's "
                      f"kernel time (the first convolution keeps its 3 input channels: {_first_conv_ratio(dense, small, x):.2f}x "
                      "fewer MACs only)")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (wall-clock figures need an otherwise idle machine)")

def _first_conv_ratio(dense, small, x):
    fl_d, fl_s = module_flops(dense, x), module_flops(small, x)
    return fl_d['conv1'] / fl_s['conv1']

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--runs', type=int, default=21)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--profile', action='store_true', help="profile even when the goal is reached")
    a = p.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)
        main(runs=a.runs, threads=a.threads, profile=a.profile or None)
