"""Tests of fastprune.deploy: ONNX export and its verification on the digits CNN and on torchvision models (masked and
compacted), errors, BatchNorm folding, int8 quantization, ONNX entries in `measure_latency`, and `deploy_report`"""
import copy, subprocess, sys, warnings
import pytest, torch, torch.nn as nn, torchvision
from hypothesis import given, settings, strategies as st
from fastprune.deploy import *
from fastprune.deploy import _require
from fastprune.granularity import Filter
from fastprune.sparsifier import Sparsifier
from fastprune.compact import compact
from fastprune.metrics import measure_latency
from fastprune.data import digits_learner, digits_cnn
import fastai.callback.schedule, fastai.callback.progress   # fit_one_cycle, no_bar

pytest.importorskip('onnxruntime'); pytest.importorskip('onnx')
warnings.filterwarnings('ignore', category=FutureWarning)

def _bn(m): return [n for n, k in m.named_modules() if isinstance(k, nn.modules.batchnorm._BatchNorm)]

def _calibrated(model, x):
    "BatchNorm statistics estimated on `x` (random init leaves outputs ~1e-15 in some torchvision models: too small to check)"
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm): m.momentum = None
    model.train()
    with torch.no_grad(): model(x)
    return model.eval()

def _ort(path, *xs):
    s = ort_session(path)
    return [torch.from_numpy(o) for o in s.run(None, {i.name: x.numpy() for i, x in zip(s.get_inputs(), xs)})]

# one torch thread in this module (small inputs on shared cores): `one_thread` in conftest.py
pytestmark = pytest.mark.usefixtures('one_thread')

@pytest.fixture(scope='module')
def trained():
    "the digits CNN trained for a few seconds, its validation tensors, and a 50%-filter masked copy and its compacted form"
    torch.manual_seed(0)
    learn = digits_learner()
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(2, 1e-2)
    dense = learn.model.eval()
    (xt, _), (xv, yv) = learn.dls.train_ds.tensors, learn.dls.valid_ds.tensors
    masked = copy.deepcopy(dense)
    Sparsifier(masked, Filter(), example_inputs=xv[:1]).prune(0.5)
    return dict(learn=learn, dense=dense, masked=masked, small=compact(masked, xv[:1]), xt=xt, xv=xv, yv=yv)

# ---------- export and verification ----------

def test_export_digits_masked_and_compacted(trained, tmp_path):
    masked, small, x = trained['masked'], trained['small'], trained['xv']
    masked.train()                                                     # exported in eval mode, mode left as it was
    fm = export_onnx(masked, x[:2], tmp_path/'masked.onnx')
    fc = export_onnx(small, x[:2], tmp_path/'sub'/'small.onnx')       # folders are created
    assert masked.training and 'prune_mask' in masked[0][0]._buffers   # the user's model is untouched
    masked.eval()
    for f in (fm, fc):
        assert f['exporter'] == 'torchscript' and f['batch_sizes'] == [2, 3] and f['max_diff'] <= f['tol'] < 0.01
    with torch.no_grad(): ref = small(x[:7])
    (om,), (oc,) = _ort(fm, x[:7]), _ort(fc, x[:7])                   # a batch size neither was traced nor checked with
    assert (om - ref).abs().max() < 1e-4 and (oc - ref).abs().max() < 1e-4
    assert 3 < fm.size/fc.size < 5                                    # half the filters: about a quarter of the weights

TV = {'resnet18 (residual)': lambda: torchvision.models.resnet18(),
      'mobilenet_v3_small (depthwise)': lambda: torchvision.models.mobilenet_v3_small(),
      'squeezenet1_1 (concat)': lambda: torchvision.models.squeezenet1_1()}

@pytest.mark.parametrize('name', list(TV))
def test_export_torchvision_masked_and_compacted(name, tmp_path):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    model = _calibrated(TV[name](), x)
    Sparsifier(model, Filter(), example_inputs=x[:1]).prune(0.5)
    small = compact(model, x[:1])
    fm, fc = export_onnx(model, x[:1], tmp_path/'m.onnx'), export_onnx(small, x[:1], tmp_path/'c.onnx')
    with torch.no_grad(): ref = small(x)                             # = the masked model's (`compact` checks it)
    assert ref.abs().max() > 1e-3                                     # outputs large enough for a relative check to mean something
    for f in (fm, fc):
        (o,) = _ort(f, x)
        assert (o - ref).abs().max() <= 1e-4*ref.abs().max(), (name, f)
    assert fc.size < 0.5*fm.size

def test_export_multiple_inputs_and_outputs(tmp_path):
    class Two(nn.Module):
        def __init__(self): super().__init__(); self.a, self.b = nn.Linear(4, 3), nn.Linear(5, 3)
        def forward(self, u, v): return self.a(u) + self.b(v), self.a(u).relu()
    f = export_onnx(Two(), (torch.randn(2, 4), torch.randn(2, 5)), tmp_path/'two.onnx')
    s = ort_session(f)
    assert [i.name for i in s.get_inputs()] == ['input0', 'input1'] and [o.name for o in s.get_outputs()] == ['output0', 'output1']

def test_dynamo_exporter(trained, tmp_path):
    f = export_onnx(trained['small'], trained['xv'][:1], tmp_path/'d.onnx', exporter='dynamo')
    assert f['exporter'] == 'dynamo' and f['max_diff'] <= f['tol'] and f['batch_sizes'] == [1, 2]
    assert not (tmp_path/'d.onnx.data').exists()                      # one self-contained file

@torch.library.custom_op('fastprune_test::hard_clip', mutates_args=())
def hard_clip(x: torch.Tensor) -> torch.Tensor: return x.clamp(-1, 1)
@hard_clip.register_fake
def _(x): return torch.empty_like(x)

def test_custom_op_error_names_the_op(tmp_path):
    class M(nn.Module):
        def __init__(self): super().__init__(); self.conv = nn.Conv2d(1, 2, 3)
        def forward(self, x): return hard_clip(self.conv(x))
    with pytest.raises(RuntimeError, match=r"operator 'fastprune_test::hard_clip'"):
        export_onnx(M(), torch.randn(1, 1, 6, 6), tmp_path/'c.onnx')

def test_fixed_batch_size_inside_the_model(tmp_path):
    "a reshape with a hard-coded batch size breaks the dynamic batch: the error says so; dynamic_batch=False exports"
    class Fixed(nn.Sequential):
        def forward(self, x): return super().forward(x).reshape(2, 18)
    m, x = Fixed(nn.Conv2d(1, 2, 3)), torch.randn(2, 1, 5, 5)
    with pytest.raises(RuntimeError, match='dynamic_batch=False'): export_onnx(m, x, tmp_path/'f.onnx')
    assert export_onnx(m, x, tmp_path/'f.onnx', dynamic_batch=False)['batch_sizes'] == [2]

def test_bad_arguments(tmp_path):
    m = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="exporter must be"): export_onnx(m, torch.randn(1, 2), tmp_path/'a.onnx', exporter='jit')
    with pytest.raises(TypeError, match='example_inputs must be a tensor'): export_onnx(m, [1, 2], tmp_path/'a.onnx')
    with pytest.raises(TypeError, match='nn.Module'): export_onnx('model.pt', torch.randn(1, 2), tmp_path/'a.onnx')

def test_verification_failure_names_the_difference(tmp_path, monkeypatch):
    "a runtime that computes something else is caught, with the difference and the tolerance in the message"
    import fastprune.deploy as fd
    real = fd.ort_session
    class Off:
        def __init__(self, s): self.s = s
        def get_inputs(self): return self.s.get_inputs()
        def run(self, names, feed): return [o + 0.5 for o in self.s.run(names, feed)]
    monkeypatch.setattr(fd, 'ort_session', lambda *a, **k: Off(real(*a, **k)))
    with pytest.raises(RuntimeError, match=r'differ from PyTorch.s by 0\.5.*tolerance'):
        export_onnx(nn.Linear(3, 2), torch.randn(2, 3), tmp_path/'l.onnx')

def test_missing_packages_give_the_extra(monkeypatch, tmp_path):
    for name in ('onnx', 'onnxruntime', 'onnxruntime.quantization'): monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"pip install 'fastprune\[deploy\]'"):
        export_onnx(nn.Linear(2, 2), torch.randn(1, 2), tmp_path/'a.onnx')
    with pytest.raises(ImportError, match=r"fastprune\[deploy\]"): quantize_onnx(tmp_path/'a.onnx', torch.randn(4, 2))

def test_star_import_needs_no_onnx():
    code = ("import sys\nfor n in ('onnx', 'onnxruntime', 'onnxscript'): sys.modules[n] = None\n"
            "from fastprune.all import *\nassert callable(export_onnx) and callable(fold_bn)")
    subprocess.run([sys.executable, '-c', code], check=True, timeout=300)

# ---------- plain_copy and fold_bn ----------

def test_plain_copy_bakes_torch_prune_and_parametrizations():
    import torch.nn.utils.prune as tprune
    from torch.nn.utils import parametrize
    m = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 2))
    tprune.l1_unstructured(m[0], 'weight', amount=0.5)
    class Half(nn.Module):
        def forward(self, w): return w/2
    parametrize.register_parametrization(m[1], 'weight', Half())
    x = torch.randn(3, 6)
    p = plain_copy(m)
    assert sorted(n for n, _ in p.named_parameters()) == ['0.bias', '0.weight', '1.bias', '1.weight']
    with torch.no_grad(): assert torch.allclose(p(x), m(x))
    assert hasattr(m[0], 'weight_orig') and parametrize.is_parametrized(m[1])   # the original is untouched

@pytest.mark.parametrize('name', ['resnet18', 'mobilenet_v3_small'])
def test_fold_bn_torchvision(name):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    m = _calibrated(getattr(torchvision.models, name)(), x)
    f = fold_bn(m, x)
    assert _bn(f) == [] and len(_bn(m)) > 10                         # every BatchNorm folded, the original keeps its own
    from torch.fx.experimental.optimization import fuse               # the peer: PyTorch's own fx pass, same answer
    with torch.no_grad(): ref, out, peer = m(x), f(x), fuse(m)(x)
    assert (out - ref).abs().max() <= 1e-4*ref.abs().max() and (out - peer).abs().max() <= 1e-5*ref.abs().max()

def test_fold_bn_keeps_what_it_cannot_fold():
    "a BatchNorm after a concatenation (DenseNet's pre-activation) or after an activation stays; the rest is folded"
    class Dense(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.bn = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.BatchNorm2d(8)
            self.c, self.bn2 = nn.Conv2d(8, 4, 3), nn.BatchNorm2d(4)
        def forward(self, x): return self.bn2(self.c(self.bn(torch.cat([self.a(x), self.b(x)], 1))))
    m = _calibrated(Dense(), torch.randn(8, 3, 6, 6))
    f = fold_bn(m, torch.randn(2, 3, 6, 6))
    assert _bn(f) == ['bn']

@settings(max_examples=12)
@given(dim=st.sampled_from([1, 2, 3]), transposed=st.booleans(), bias=st.booleans(), affine=st.booleans(),
       groups=st.sampled_from([1, 2]), seed=st.integers(0, 2**16))
def test_fold_bn_property(dim, transposed, bias, affine, groups, seed):
    "conv (transposed or not, grouped or not, with or without bias) + BatchNorm of any dimension: outputs unchanged"
    torch.manual_seed(seed)
    Conv = getattr(nn, f"Conv{'Transpose' if transposed else ''}{dim}d")
    m = nn.Sequential(Conv(4, 6, 3, bias=bias, groups=groups), getattr(nn, f'BatchNorm{dim}d')(6, affine=affine))
    with torch.no_grad():
        m[1].running_mean.uniform_(-1, 1); m[1].running_var.uniform_(0.5, 2)
        if affine: m[1].weight.uniform_(-2, 2); m[1].bias.uniform_(-1, 1)
    x = torch.randn(2, 4, *[5]*dim)
    f = fold_bn(m.eval(), x)
    assert _bn(f) == ([] if not (transposed and groups > 1) else ['1'])   # PyTorch cannot fold grouped transposed ones
    with torch.no_grad(): assert torch.allclose(f(x), m(x), atol=1e-5, rtol=1e-4)

def test_fold_bn_linear_and_errors():
    m = nn.Sequential(nn.Linear(5, 3), nn.BatchNorm1d(3))
    _calibrated(m, torch.randn(16, 5))
    assert _bn(fold_bn(m, torch.randn(4, 5))) == []
    assert m.training is False and _bn(m) == ['1']
    class Gated(nn.Sequential):
        def forward(self, x):
            y = super().forward(x)
            return y if y.sum() > 0 else -y
    with pytest.raises(TypeError, match='torch.fx cannot trace Gated'): fold_bn(Gated(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)))

def test_export_with_fold_bn(trained, tmp_path):
    f = export_onnx(trained['dense'], trained['xv'][:2], tmp_path/'f.onnx', fold_bn=True)
    import onnx
    ops = {n.op_type for n in onnx.load(str(f)).graph.node}
    assert 'BatchNormalization' not in ops and f['max_diff'] <= f['tol']

# ---------- int8 ----------

def test_int8_digits(trained, tmp_path):
    "stated tolerance: the int8 model's top-1 agrees with the float model's on >= 95% of the validation images"
    f = export_onnx(trained['small'], trained['xv'][:1], tmp_path/'s.onnx')
    q = quantize_onnx(f, trained['xt'][:256], eval_inputs=trained['xv'])
    assert q.path == tmp_path/'s.int8.onnx' and q['n_checked'] == len(trained['xv'])
    assert q['agreement'] >= 0.95 and q.size < 0.5*f.size
    (logits,) = _ort(q, trained['xv'])
    acc = float((logits.argmax(1) == trained['yv']).float().mean())
    with torch.no_grad(): acc_f = float((trained['small'](trained['xv']).argmax(1) == trained['yv']).float().mean())
    assert acc >= acc_f - 0.03
    # calibration straight from a fastai DataLoader (batches are (x, y) tuples: the inputs are taken, labels dropped)
    q2 = quantize_onnx(f, trained['learn'].dls.valid, tmp_path/'dl.int8.onnx')
    assert q2['agreement'] >= 0.95 and q2['n_checked'] == len(trained['xv'])

def test_int8_errors(trained, tmp_path):
    f = export_onnx(trained['small'], trained['xv'][:1], tmp_path/'s.onnx')
    with pytest.raises(RuntimeError, match='min_agreement'):
        quantize_onnx(f, torch.zeros(1, 1, 8, 8), eval_inputs=trained['xv'])   # calibrated on one blank image
    with pytest.raises(ValueError, match='activation_type'): quantize_onnx(f, trained['xv'], activation_type='int4')
    with pytest.raises(ValueError, match='min_agreement'): quantize_onnx(f, trained['xv'], min_agreement=95)
    with pytest.raises(ValueError, match='empty'): quantize_onnx(f, [])

# ---------- measure_latency with ONNX entries ----------

def test_measure_latency_onnx_beside_modules(trained, tmp_path):
    small, x = trained['small'], trained['xv'][:8]
    f = export_onnx(small, x[:1], tmp_path/'s.onnx')
    sess = ort_session(f, threads=1)
    r = measure_latency({'torch': small, 'file': str(f), 'path': f.path, 'OnnxFile': f, 'session': sess}, x, n_runs=3, warmup=1, threads=1)
    df = r.to_pandas()
    assert list(df.model) == ['torch', 'file', 'path', 'OnnxFile', 'session'] and df.speedup[0] == 1
    assert all(len(t) == 3 for t in r.times.values()) and (df.median_ms > 0).all()
    assert list(measure_latency([small, f], x, n_runs=1, warmup=0).df.model) == ['0: Sequential', '1: s.onnx']
    assert list(measure_latency(f, x, n_runs=1, warmup=0).df.model) == ['0: s.onnx']
    with pytest.raises(ValueError, match='CPU'): measure_latency({'a': small, 'b': f}, x, device='meta')
    with pytest.raises(TypeError, match='ONNX files'): measure_latency({'a': small, 'b': 'model.pt'}, x)

def test_measure_latency_rotates_sessions(monkeypatch):
    "an onnxruntime-like session takes its turn in the rotation like a module, on a fake clock"
    import fastprune.metrics as fm
    clock, log = {'wall': 0.}, []
    class In:
        name = 'input'
    class FakeSession:
        def __init__(self, name, s): self.name, self.s = name, s
        def get_inputs(self): return [In()]
        def run(self, names, feed): log.append(self.name); clock['wall'] += self.s; return [feed['input']]
    class Mod(nn.Module):
        def forward(self, x): log.append('torch'); clock['wall'] += 0.04; return x
    monkeypatch.setattr(fm.time, 'perf_counter', lambda: clock['wall'])
    r = measure_latency({'torch': Mod(), 'ort': FakeSession('ort', 0.01)}, torch.zeros(1, 2), n_runs=4, warmup=1)
    assert log[2:] == ['torch', 'ort', 'ort', 'torch', 'torch', 'ort', 'ort', 'torch']
    assert r['ort'].speedup == pytest.approx(4)

# ---------- channel counts ----------

def test_channel_misfits_follow_onnxruntime_rule():
    assert channel_misfits(digits_cnn(widths=(16, 32, 64))) == {}
    assert channel_misfits(digits_cnn(widths=(15, 31, 63))) == {'2.0': (31, 63, 1)}   # 15 inputs: fewer than a block, fine
    assert channel_misfits(digits_cnn(widths=(24, 40, 64)), block=8) == {}
    dw = nn.Sequential(nn.Conv2d(24, 24, 3, groups=24), nn.Conv2d(32, 32, 3, groups=32), nn.Conv2d(32, 64, 3, groups=2))
    assert channel_misfits(dw) == {'0': (24, 24, 24)}                                # depthwise: outputs a multiple of 16
    assert channel_misfits(dw, block=8) == {}
    for name in ('resnet18', 'squeezenet1_1'):
        with torch.device('meta'): assert channel_misfits(getattr(torchvision.models, name)()) == {}

def test_deploy_report_names_misfit_channel_counts(trained, tmp_path):
    odd = digits_cnn(widths=(15, 31, 63)).eval()
    rep = deploy_report(trained['dense'], odd, trained['xv'][:1], tmp_path, n_runs=1, warmup=0)
    assert rep.misfits == {'2.0': (31, 63, 1)} and rep.dense_misfits == {}
    assert "round_to=16" in rep.lines()[-1] and "'2.0' (31 in, 63 out)" in rep.lines()[-1]
    aligned = deploy_report(trained['dense'], trained['small'], trained['xv'][:1], tmp_path, n_runs=1, warmup=0)
    assert not any('round_to' in l for l in aligned.lines())

# ---------- deploy_report ----------

def test_deploy_report(trained, tmp_path):
    rep = deploy_report(trained['dense'], trained['small'], trained['xv'][:1], tmp_path/'out', quantize='int8',
                        calibration_inputs=trained['xt'][:256], n_runs=3, warmup=1, threads=1, batch_size=16)
    assert sorted(p.name for p in (tmp_path/'out').iterdir()) == ['model.int8.onnx', 'model.onnx']
    rows = {r['model']: r for r in rep.rows()}
    assert list(rows) == ['dense (PyTorch)', 'pruned (PyTorch)', 'dense (ONNX Runtime)', 'pruned (ONNX Runtime)',
                          'pruned int8 (ONNX Runtime)']
    assert rows['dense (ONNX Runtime)']['vs_dense_ort'] == 1 and rows['dense (PyTorch)']['vs_dense_pytorch'] == 1
    assert rows['pruned (ONNX Runtime)']['file'] == 'model.onnx' and rep.onnx['max_diff'] <= rep.onnx['tol']
    assert rows['pruned int8 (ONNX Runtime)']['bytes'] < rows['pruned (ONNX Runtime)']['bytes'] < rows['dense (ONNX Runtime)']['bytes']
    assert rep.int8['agreement'] >= 0.95 and 3 < rep.mac_ratio < 4.5 and rep.batch_size == 16
    lines = rep.lines()
    assert any(l.startswith('measured speed-up (ONNX Runtime): ') and 'MAC ratio' in l for l in lines)
    assert lines[0].startswith('ONNX export: model.onnx') and lines[1].startswith('int8')
    assert 'measured speed-up (ONNX Runtime)' in rep._repr_markdown_()

def test_deploy_report_masked_and_errors(trained, tmp_path):
    rep = deploy_report(trained['dense'], trained['masked'], trained['xv'][:1], tmp_path, n_runs=1, warmup=0)
    assert rep.int8 is None and not rep.compacted and 'not compacted' in rep.lines()[-1]
    with pytest.raises(ValueError, match='calibration_inputs'):
        deploy_report(trained['dense'], trained['small'], trained['xv'][:1], tmp_path, quantize='int8')
    with pytest.raises(ValueError, match="quantize must be"):
        deploy_report(trained['dense'], trained['small'], trained['xv'][:1], tmp_path, quantize='fp16')

# ---------- benchmark ----------

@pytest.mark.slow
def test_deploy_speed_benchmark_runs(capsys):
    "the benchmark runs end to end on a tiny input: goal line, both runtimes, and the profiler's per-operator table"
    import importlib.util, pathlib
    path = pathlib.Path(__file__).parent.parent/'benchmarks'/'deploy_speed.py'
    spec = importlib.util.spec_from_file_location('bench_deploy_speed', path)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    mod.main(runs=2, warmup=1, threads=1, bs=1, size=32, profile=True)
    out = capsys.readouterr().out
    assert 'of the MAC ratio   goal: >= 0.9' in out and 'MAC ratio (theoretical speed-up)' in out
    assert any(l.startswith('ORT ') for l in out.splitlines()) and any(l.startswith('PyTorch ') for l in out.splitlines())
    assert '  Conv ' in out and 'convolutions alone' in out
