"Tests of fastprune.metrics: counts against hand computation, Blalock ratios, reports, latency, plots, sensitivity"
import copy, math
import pytest, torch, torchvision
from torch import nn
import torch.nn.utils.prune as tprune
from torch.nn.utils import parametrize
from hypothesis import given, settings, strategies as st
import matplotlib
matplotlib.use('Agg')
from fastprune.metrics import *


def _zero_first(layer, k):
    "Zero the first k weights (flattened order) of `layer`"
    with torch.no_grad(): layer.weight.view(-1)[:k] = 0


# ---------- counting against hand computation ----------

def test_linear_counts_by_hand():
    m = nn.Sequential(nn.Linear(4, 2), nn.Linear(2, 1))
    _zero_first(m[0], 4); _zero_first(m[1], 1)
    with torch.no_grad(): m[0].bias.fill_(1); m[1].bias.fill_(1)
    assert count_params(m) == (13, 8)              # 8+2 + 2+1 parameters, 5 zeros
    assert count_params(m, scope='weights') == (10, 5)
    x = torch.randn(1, 4)
    assert module_flops(m, x) == {'0': 2*4*2, '1': 2*2*1}
    assert count_flops(m, x) == (20, 10)           # both layers 50% dense
    assert count_flops(m, torch.randn(3, 4)) == (60, 30)
    assert compression_ratio(m) == 13/8
    assert compression_ratio(m, scope='weights') == 2
    assert theoretical_speedup(m, x) == 2


def test_conv_counts_by_hand():
    c = nn.Conv2d(2, 3, 3, padding=1)               # 54 weights + 3 biases
    _zero_first(c, 27)
    x = torch.randn(1, 2, 5, 5)
    macs = 3*2*3*3*5*5                              # out_ch * in_ch * k*k * H_out*W_out
    assert count_params(c) == (57, 30)
    assert count_flops(c, x) == (2*macs, macs)
    # stride 2, no padding: 2x2 output positions
    c2 = nn.Conv2d(2, 3, 3, stride=2)
    assert count_flops(c2, x).total == 2*3*2*9*2*2


def test_conv_variants_by_hand():
    x = torch.randn(1, 4, 6, 6)
    dw = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
    assert count_flops(dw, x).total == 2*4*1*9*36   # each output channel sees 1 input channel
    c1 = nn.Conv1d(3, 5, 3, bias=False)
    assert count_flops(c1, torch.randn(2, 3, 10)).total == 2*2*5*3*3*8
    ct = nn.ConvTranspose2d(4, 2, 2, stride=2, bias=False)   # counted per input position
    assert count_flops(ct, x).total == 2*4*2*4*36


def test_fifty_percent_model_ratios():
    "50% of every prunable weight zero: weights-only compression is exactly 2; biases/BN keep 'all' below 2"
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8*4*4, 10))
    for l in (m[0], m[4]): _zero_first(l, l.weight.numel()//2)
    with torch.no_grad(): m[1].bias.fill_(0.1)       # BN bias starts at 0: real zeros would count as pruned
    x = torch.randn(1, 3, 4, 4)
    assert compression_ratio(m, scope='weights') == 2
    nw = 8*3*9 + 10*128
    total = nw + 8 + 16 + 10                        # + conv bias, BN weight & bias, linear bias
    assert count_params(m) == (total, nw//2 + 8 + 16 + 10)
    assert compression_ratio(m) == total/(nw//2 + 34) < 2
    assert theoretical_speedup(m, x) == pytest.approx(2)


def test_torch_prune_counts_effective_weight():
    m = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 3))
    tprune.global_unstructured([(m[0], 'weight'), (m[1], 'weight')], pruning_method=tprune.L1Unstructured, amount=0.5)
    assert count_params(m, 'weights') == (130, 65)
    x = torch.randn(1, 10)
    c = count_flops(m, x)
    baked = copy.deepcopy(m)
    for l in baked: tprune.remove(l, 'weight')
    assert count_params(baked) == count_params(m)
    assert count_flops(baked, x) == c
    assert set(layer_params(m)) == {'0', '1'}


def test_parametrize_counts():
    class Half(nn.Module):
        def forward(self, w): return w * (torch.arange(w.numel()).reshape(w.shape) % 2)
    m = nn.Linear(4, 4, bias=False)
    parametrize.register_parametrization(m, 'weight', Half())
    assert count_params(m) == (16, 8)
    assert compression_ratio(m) == 2


def test_compacted_needs_dense():
    dense = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
    small = nn.Sequential(nn.Linear(8, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.randn(1, 8)
    assert compression_ratio(small, dense=dense) == (8*6+6+6*2+2)/(8*3+3+3*2+2)
    assert theoretical_speedup(small, x, dense=dense) == (8*6+6*2)/(8*3+3*2)
    assert compression_ratio(small) == 1 and theoretical_speedup(small, x) == 1


def test_flops_attributed_to_the_module_that_runs_them():
    class Block(nn.Module):
        def __init__(self):
            super().__init__(); self.lin = nn.Linear(4, 4); self.w = nn.Parameter(torch.randn(4, 4))
        def forward(self, x): return self.lin(x) @ self.w      # 32 FLOPs in lin, 32 in Block itself
    class Net(nn.Module):
        def __init__(self):
            super().__init__(); self.b = Block(); self.shared = nn.Linear(4, 4)
        def forward(self, x): return self.shared(self.shared(self.b(x)))
    n = Net()
    assert module_flops(n, torch.randn(1, 4)) == {'b': 32, 'b.lin': 32, 'shared': 64}


def test_counting_leaves_model_unchanged():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    sd = copy.deepcopy(m.state_dict())
    count_flops(m, torch.randn(2, 3, 8, 8)); sparsity_report(m, torch.randn(2, 3, 8, 8))
    assert m.training
    for k, v in m.state_dict().items(): assert torch.equal(v, sd[k]), k


def test_bad_inputs_raise():
    m = nn.Linear(2, 2)
    with pytest.raises(ValueError, match='scope'): count_params(m, scope='bias')
    with pytest.raises(ValueError, match='example_inputs'): count_flops(m, None)
    with pytest.raises(ValueError, match='models'): measure_latency({}, torch.randn(1, 2))


@settings(max_examples=25)
@given(st.integers(1, 12), st.integers(1, 12), st.floats(0, 1), st.integers(0, 2**31-1))
def test_random_masks(n_in, n_out, p, seed):
    "Non-zero counts equal the mask's ones; non-zero FLOPs are the layer's FLOPs scaled by density"
    g = torch.Generator().manual_seed(seed)
    m = nn.Linear(n_in, n_out, bias=False)
    mask = torch.rand(n_out, n_in, generator=g) >= p
    with torch.no_grad(): m.weight.copy_(torch.randn(n_out, n_in, generator=g).abs() + 0.1); m.weight.mul_(mask)
    k = int(mask.sum())
    assert count_params(m) == (n_in*n_out, k)
    assert count_flops(m, torch.randn(1, n_in)) == (2*n_in*n_out, round(2*n_in*n_out*k/(n_in*n_out)))


@pytest.mark.parametrize('arch', ['resnet18', 'mobilenet_v2', 'mobilenet_v3_small', 'vgg11_bn', 'efficientnet_b0', 'densenet121'])
def test_zoo_flops_lose_nothing(arch):
    "Per-module attribution sums to PyTorch's global count, on the meta device (shapes only)"
    from torch.utils.flop_counter import FlopCounterMode
    with torch.device('meta'): m = getattr(torchvision.models, arch)(weights=None).eval()
    x = torch.randn(1, 3, 64, 64, device='meta')
    with FlopCounterMode(display=False) as fc: m(x)
    fl = module_flops(m, x)
    assert sum(fl.values()) == fc.get_total_flops()
    convs = {n for n, l in m.named_modules() if isinstance(l, (nn.Conv2d, nn.Linear))}
    assert convs <= set(fl)


def test_zoo_resnet18_pruned():
    m = torchvision.models.resnet18(weights=None)
    tprune.global_unstructured([(l, 'weight') for l in m.modules() if isinstance(l, (nn.Conv2d, nn.Linear))],
                               pruning_method=tprune.L1Unstructured, amount=0.9)
    x = torch.randn(1, 3, 32, 32)
    assert compression_ratio(m, scope='weights') == pytest.approx(10, rel=1e-3)
    s = theoretical_speedup(m, x)
    assert 1 < s < 10


# ---------- report ----------

def test_report_columns_and_totals():
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4*4*4, 2))
    _zero_first(m[0], 18)
    rep = sparsity_report(m)
    df = rep.to_pandas()
    assert list(df.columns) == ['layer', 'type', 'shape', 'weights', 'nonzero', 'sparsity']
    assert list(df.layer) == ['0', '3'] and list(df.type) == ['Conv2d', 'Linear']
    assert df.shape[0] == 2 and df.weights.tolist() == [36, 128] and df.nonzero.tolist() == [18, 128]
    assert 'theoretical_speedup' not in rep.summary
    x = torch.randn(1, 1, 6, 6)
    rep = sparsity_report(m, x)
    df = rep.to_pandas()
    assert list(df.columns) == ['layer', 'type', 'shape', 'weights', 'nonzero', 'sparsity', 'flops', 'nonzero_flops']
    assert df.flops.tolist() == [2*4*9*16, 2*64*2] and df.nonzero_flops.tolist() == [4*9*16, 2*64*2]
    assert df.attrs['theoretical_speedup'] == pytest.approx(rep['flops']/rep['nonzero_flops'])
    assert rep['compression_ratio'] == compression_ratio(m)
    txt = repr(rep)
    assert 'compression ratio' in txt and 'theoretical speedup' in txt and 'total' in txt
    assert rep._repr_markdown_().startswith('| layer |')


def test_report_compacted_uses_dense_totals():
    dense = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
    small = nn.Sequential(nn.Linear(8, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.randn(1, 8)
    rep = sparsity_report(small, x, dense=dense)
    assert rep['theoretical_speedup'] == theoretical_speedup(small, x, dense=dense)
    assert rep['compression_ratio'] == compression_ratio(small, dense=dense)


# ---------- latency ----------

def test_latency_structure():
    a, b = nn.Linear(16, 16).eval(), nn.Linear(16, 4).train()
    r = measure_latency({'a': a, 'b': b}, torch.randn(2, 16), n_runs=3, warmup=1, threads=1, batch_size=4)
    df = r.to_pandas()
    assert list(df.columns) == ['model', 'median_ms', 'min_ms', 'cpu_ms', 'speedup', 'speedup_q1', 'speedup_q3']
    assert list(df.model) == ['a', 'b'] and df.speedup[0] == 1
    assert (df.median_ms > 0).all() and (df.min_ms <= df.median_ms).all()
    assert all(len(t) == 3 for t in r.times.values())
    assert b.training and not a.training              # modes restored
    r2 = measure_latency([a, b], torch.randn(1, 16), n_runs=1, warmup=0)
    assert len(r2.to_pandas()) == 2

def test_latency_of_frozen_torchscript():
    "a frozen TorchScript module has no train/eval mode: it is timed as is"
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad(): frozen = torch.jit.freeze(torch.jit.trace(m, x))
    r = measure_latency({'eager': m, 'frozen': frozen}, x, n_runs=2, warmup=1)
    assert len(r.times['frozen']) == 2 and not m.training

class _Clocked(nn.Module):
    "advances a fake wall clock by `s` and a fake CPU clock by `s/10` per call, and logs its name"
    def __init__(self, name, s, clock, log): super().__init__(); self.name, self.s, self.clock, self.log = name, s, clock, log
    def forward(self, x):
        self.log.append(self.name); self.clock['wall'] += self.s; self.clock['cpu'] += self.s / 10
        return x

def test_latency_rotation_and_ratios(monkeypatch):
    "timed on a fake clock, so the figures are exact whatever the machine is doing"
    import fastprune.metrics as fm
    clock, log = {'wall': 0., 'cpu': 0.}, []
    models = {n: _Clocked(n, s, clock, log) for n, s in [('slow', 0.04), ('fast', 0.01), ('mid', 0.02)]}
    with monkeypatch.context() as mp:
        mp.setattr(fm.time, 'perf_counter', lambda: clock['wall'])
        mp.setattr(fm.time, 'process_time', lambda: clock['cpu'])
        r = measure_latency(models, torch.zeros(1, 2), n_runs=6, warmup=1)
    rounds = [log[3 + i:3 + i + 3] for i in range(0, 18, 3)]              # after the warm-up round
    assert [rd[0] for rd in rounds] == ['slow', 'fast', 'mid'] * 2          # each round starts with the next model
    assert all(sorted(rd) == ['fast', 'mid', 'slow'] for rd in rounds)
    df = r.to_pandas().set_index('model')
    assert list(df.median_ms) == pytest.approx([40, 10, 20]) and list(df.cpu_ms) == pytest.approx([4, 1, 2])
    assert list(df.speedup) == pytest.approx([1, 4, 2])
    assert list(df.speedup_q1) == pytest.approx([1, 4, 2]) and list(df.speedup_q3) == pytest.approx([1, 4, 2])

def test_latency_quartiles_show_noise(monkeypatch):
    "run-by-run ratios: a model that is 2x faster in half of the rounds and 4x in the other half has quartiles 2 and 4"
    import fastprune.metrics as fm
    clock, log = {'wall': 0., 'cpu': 0.}, []
    base, other = _Clocked('base', 0.04, clock, log), _Clocked('other', 0.02, clock, log)
    def forward(x):                                                        # alternately 20 ms and 10 ms
        other.s = 0.02 if other.s == 0.01 else 0.01
        return _Clocked.forward(other, x)
    other.forward = forward
    with monkeypatch.context() as mp:
        mp.setattr(fm.time, 'perf_counter', lambda: clock['wall'])
        mp.setattr(fm.time, 'process_time', lambda: clock['cpu'])
        df = measure_latency({'base': base, 'other': other}, torch.zeros(1, 2), n_runs=8, warmup=0).to_pandas()
    assert df.speedup_q1[1] == pytest.approx(2) and df.speedup_q3[1] == pytest.approx(4)

# ---------- plots ----------

def test_plots_return_axes():
    import matplotlib.pyplot as plt
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4*4*4, 2))
    d = copy.deepcopy(m); _zero_first(m[0], 18)
    x = torch.randn(1, 1, 6, 6)
    for ax in (plot_layer_sparsity(m), plot_layer_sparsity(sparsity_report(m)), plot_params_flops(m, x),
               plot_weight_hist(d, m), plot_tradeoff({'a': [(0.5, 0.9), (0.9, 0.8)]}, baseline=0.95)):
        assert isinstance(ax, plt.Axes)
    assert [round(p.get_height()) for p in plot_layer_sparsity(m).patches] == [50, 0]
    with pytest.raises(ValueError, match='fractions'): plot_tradeoff({'a': [(50, 0.9)]})
    plt.close('all')


# ---------- sensitivity ----------

def test_suggest_rule_by_hand():
    "Two layers, one robust and large, one sensitive and small: the robust one takes the sparsity"
    curves = {'big': [(0.5, 0.99), (0.9, 0.98)], 'small': [(0.5, 0.80), (0.9, 0.50)]}
    sens = Sensitivity(curves, baseline=1.0, sizes={'big': 900, 'small': 100})
    sug = sens.suggest(0.5)
    assert sug['small'] == 0 and sug['big'] == pytest.approx(500/900)
    sug = sens.suggest(0.85)
    assert sum(sug[n]*s for n, s in sens.sizes.items())/1000 == pytest.approx(0.85)
    assert sug['big'] == 0.9 and 0 < sug['small'] <= 0.9
    with pytest.raises(ValueError, match='out of reach'): sens.suggest(0.85, tolerance=0.05)
    with pytest.raises(ValueError, match='target'): sens.suggest(1.5)
    # a loss: lower is better
    lossy = Sensitivity({'a': [(0.5, 0.1), (0.9, 0.2)], 'b': [(0.5, 1.0), (0.9, 2.0)]}, 0.1, {'a': 10, 'b': 10},
                        higher_is_better=False)
    assert lossy.suggest(0.45) == {'a': 0.9, 'b': 0.0}


def test_sensitivity_analysis_with_sparsifier():
    sparsifier = pytest.importorskip('fastprune.sparsifier')
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(64, 6); y = m(x).argmax(1)
    sd = copy.deepcopy(m.state_dict()); buffers = {n for n, _ in m.named_buffers()}
    def agreement(model): return (model(x).argmax(1) == y).float().mean().item()
    sens = sensitivity_analysis(m, agreement, sparsities=(0.5, 0.9), progress=False)
    # the model comes back unchanged, without masks
    for k, v in m.state_dict().items(): assert torch.equal(v, sd[k])
    assert {n for n, _ in m.named_buffers()} == buffers
    assert sens.baseline == 1.0
    assert len(sens.curves) >= 2 and all(len(c) == 2 for c in sens.curves.values())
    assert list(sens.to_pandas().columns) == ['weights', 0.5, 0.9]
    sug = sens.suggest(0.6)
    n = sum(sens.sizes.values())
    assert sum(sens.sizes[k]*v for k, v in sug.items())/n == pytest.approx(0.6)
    # the suggestion is accepted by the Sparsifier and reaches roughly its target
    sp = sparsifier.Sparsifier(copy.deepcopy(m), layers=list(sug))
    sp.prune(sug)
    achieved = sp.layer_sparsity()
    for k, v in sug.items(): assert achieved[k] == pytest.approx(v, abs=0.1)
    import matplotlib.pyplot as plt
    assert isinstance(sens.plot(), plt.Axes); plt.close('all')


@settings(max_examples=40)
@given(st.lists(st.tuples(st.integers(1, 10_000), st.lists(st.floats(0, 1), min_size=3, max_size=3)), min_size=1, max_size=6),
       st.floats(0, 0.94))
def test_suggest_hits_target(layers, target):
    "Whatever the curves, the suggestion's weight-weighted average is the target, and stays on the measured grid"
    sp = (0.3, 0.6, 0.95)
    curves = {f'l{i}': list(zip(sp, vals)) for i, (_, vals) in enumerate(layers)}
    sizes = {f'l{i}': n for i, (n, _) in enumerate(layers)}
    sug = Sensitivity(curves, 1.0, sizes).suggest(target)
    assert set(sug) == set(curves)
    assert all(0 <= s <= 0.95 + 1e-12 for s in sug.values())
    assert sum(sizes[k]*v for k, v in sug.items())/sum(sizes.values()) == pytest.approx(target, abs=1e-9)


def test_sensitivity_analysis_errors():
    pytest.importorskip('fastprune.sparsifier')
    from fastprune.criteria import Taylor
    m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match='gradients'): sensitivity_analysis(m, lambda m: 1., criterion=Taylor())
    with pytest.raises(ValueError, match='sparsities'): sensitivity_analysis(m, lambda m: 1., sparsities=(0.5, 1.0))
    with pytest.raises(TypeError, match='evaluate'): sensitivity_analysis(m, 3)
    sens = sensitivity_analysis(m, lambda model: float(model[0].weight.count_nonzero()), sparsities=(0.5,),
                                layers=[m[0], '1'], progress=False)
    assert sens.curves == {'0': [(0.5, 8.)], '1': [(0.5, 16.)]}   # each trial prunes one layer only
    assert sens.baseline == 16.
