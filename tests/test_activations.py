"Tests of fastprune.activations: scores by hand, the hooks' life cycle (forward untouched, copies, removal), collect_statistics, PruneCallback"
import copy, pickle, subprocess, sys, warnings
import pytest, torch, torchvision
from torch import nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from fastprune.granularity import *
from fastprune.criteria import *
from fastprune.activations import *
from fastprune.activations import _stat_hooks
from fastprune.sparsifier import Sparsifier
from fastprune.data import digits_cnn, digits_dls, digits_learner

ACTIVATION = [ActivationMean, APoZ, Wanda, ActivationRedundancy]
FILTER_ONLY = [ActivationMean, APoZ, ActivationRedundancy]

def known_layer(weights=(1., -1., 0., 2.)):
    "1x1 conv + ReLU: channel k outputs relu(weights[k] * x)"
    net = nn.Sequential(nn.Conv2d(1, len(weights), 1, bias=False), nn.ReLU())
    with torch.no_grad(): net[0].weight.copy_(torch.tensor(weights).view(-1, 1, 1, 1))
    return net

X = torch.tensor([1., -2., 3., 0.]).view(1, 1, 2, 2)

def fed(crit, net, *batches, **kw):
    "A Sparsifier on `net` with `crit`, fed `batches` (one update each)"
    sp = Sparsifier(net, 'filter' if crit.granularities == (Filter,) else 'weight', crit, keep_classifier=True, **kw)
    for b in batches: net(b); sp.update()
    return sp

# ---------------------------------------------------------------- scores by hand
def test_zero_channel_scores_lowest():
    "after its ReLU, channel 2 always outputs 0: the lowest score of every output criterion"
    for cls in FILTER_ONLY:
        net = known_layer()
        crit = cls(normalize=None)
        fed(crit, net, X, torch.randn(3, 1, 2, 2))
        s = crit(net[0], Filter())
        assert s[2] == s.min() == 0, (cls, s)
        assert (s[[1, 3]] > 0).all(), (cls, s)

def test_mean_and_apoz_by_hand():
    net, am, apoz = known_layer(), ActivationMean(normalize=None), APoZ(normalize=None)
    sp = Sparsifier(net, 'filter', am, keep_classifier=True)
    sp2 = Sparsifier(net, 'filter', apoz, keep_classifier=True)
    net(X); sp.update(); sp2.update()
    torch.testing.assert_close(am(net[0], Filter()), torch.tensor([1., .5, 0., 2.]))
    torch.testing.assert_close(apoz(net[0], Filter()), torch.tensor([.5, .25, 0., .5]))

def test_identical_channels_are_redundant():
    "two identical channels: one of them (the later) scores 0, the other not; pruning one channel removes the copy"
    net, red = known_layer((1., -1., 1.)), ActivationRedundancy(normalize=None)
    sp = fed(red, net, torch.randn(4, 1, 3, 3))
    s = red(net[0], Filter())
    torch.testing.assert_close(red.correlations(net[0])[0, 2], torch.tensor(1., dtype=torch.float64))
    assert s[2] < 1e-6 and s[0] > .3, s   # equal mean squares: the lower index is the stronger copy
    sp.prune(1/3)
    assert Filter().pruned_groups(net[0].prune_mask, net[0]).tolist() == [False, False, True]
    torch.testing.assert_close(red(net[0], Filter())[[0, 1]], s[[0, 1]])  # channel 0 is compared with channel 1 only

def test_redundancy_ignores_pruned_channels():
    net, red = known_layer((1., 2.)), ActivationRedundancy(normalize=None)
    sp = fed(red, net, torch.randn(4, 1, 3, 3))
    assert red(net[0], Filter())[0] < 1e-6   # a copy of channel 1 (up to rounding)
    with torch.no_grad(): net[0].prune_mask[1] = False
    assert red(net[0], Filter())[0] == 1   # its copy is pruned: nothing left that carries it

def test_wanda_by_hand_linear_and_conv():
    lin = nn.Linear(3, 2, bias=False)
    w = Wanda(normalize=None)
    sp = Sparsifier(lin, 'weight', w, keep_classifier=True)
    batches = [torch.tensor([[1., 2., -3.]]), torch.tensor([[2., -1., 1.], [0., 1., 2.]])]
    for b in batches: lin(b); sp.update()
    norms = torch.cat(batches).norm(dim=0)
    torch.testing.assert_close(w.element_scores(lin), lin.weight.detach().abs() * norms)
    torch.testing.assert_close(w(lin, Channel()), lin.weight.detach().abs().sum(0) * norms)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    w2 = Wanda(normalize=None)
    sp = Sparsifier(conv, 'kernel', w2, keep_classifier=True)
    xb = torch.randn(5, 3, 6, 6)
    conv(xb); sp.update()
    xn = xb.transpose(0, 1).reshape(3, -1).norm(dim=1)
    torch.testing.assert_close(w2.element_scores(conv), conv.weight.detach().abs() * xn[None, :, None, None])
    torch.testing.assert_close(w2(conv, Kernel()), (conv.weight.detach().abs() * xn[None, :, None, None]).sum((2, 3)).flatten())

def test_wanda_tokens_of_a_sequence():
    "a Linear on (batch, tokens, features): the norm runs over every token of every sample"
    lin, w = nn.Linear(4, 3), Wanda(normalize=None)
    sp = Sparsifier(lin, 'weight', w, keep_classifier=True)
    xb = torch.randn(2, 5, 4)
    lin(xb); sp.update()
    torch.testing.assert_close(w.input_norms(lin), xb.reshape(-1, 4).norm(dim=0))
    assert w.statistics(lin)[1] == 10

@settings(max_examples=25)
@given(st.integers(0, 2**31 - 1), st.sampled_from(['conv', 'grouped', 'convT', 'linear']), st.integers(1, 3))
def test_wanda_matches_direct_computation(seed, kind, n_batches):
    "on random layers and batches, |W| * ||X_in|| with the input channel of each weight found by hand"
    torch.manual_seed(seed)
    layer = {'conv': lambda: nn.Conv2d(4, 6, 3), 'grouped': lambda: nn.Conv2d(4, 6, 3, groups=2),
             'convT': lambda: nn.ConvTranspose2d(4, 6, 3, groups=2), 'linear': lambda: nn.Linear(4, 6)}[kind]()
    w = Wanda(normalize=None)
    sp = Sparsifier(layer, 'weight', w, keep_classifier=True)
    xs = [torch.randn(int(torch.randint(1, 4, ())), 4, *([5, 5] if kind != 'linear' else [])) for _ in range(n_batches)]
    for x in xs: layer(x); sp.update()
    sq = sum(x.transpose(0, 1).reshape(4, -1).pow(2).sum(1) for x in xs)
    W = layer.weight.detach().abs()
    if kind == 'convT': expected = W * sq.sqrt()[:, None, None, None]          # weight (in, out/groups, k, k)
    elif kind == 'grouped': expected = W * sq.sqrt().view(2, 2)[torch.arange(6) // 3][:, :, None, None]  # in of out o: group o//3
    elif kind == 'conv': expected = W * sq.sqrt()[None, :, None, None]
    else: expected = W * sq.sqrt()[None]
    torch.testing.assert_close(w.element_scores(layer), expected)

@settings(max_examples=25)
@given(st.integers(0, 2**31 - 1), st.integers(1, 4), st.sampled_from([None, 'relu', 'gelu']))
def test_output_statistics_match_direct_computation(seed, n_batches, act):
    "ActivationMean, APoZ and the correlations equal a direct computation over all the batches' observed outputs"
    torch.manual_seed(seed)
    mods = [nn.Conv2d(2, 5, 3), nn.BatchNorm2d(5)] + ({'relu': [nn.ReLU()], 'gelu': [nn.GELU()]}.get(act, []))
    net = nn.Sequential(*mods)
    crits = [ActivationMean(normalize=None), APoZ(normalize=None), ActivationRedundancy(normalize=None)]
    sps = [Sparsifier(net, 'filter', c, keep_classifier=True) for c in crits]
    outs = []
    for _ in range(n_batches):
        out = net(torch.randn(int(torch.randint(2, 5, ())), 2, 6, 6))
        outs.append(out.detach().transpose(0, 1).reshape(5, -1))
        for sp in sps: sp.update()
    A = torch.cat(outs, 1)
    torch.testing.assert_close(crits[0](net[0], Filter()), A.abs().mean(1))
    torch.testing.assert_close(crits[1](net[0], Filter()), (A != 0).float().mean(1))
    torch.testing.assert_close(crits[2].correlations(net[0]), torch.corrcoef(A.double()), atol=1e-5, rtol=1e-4)

def test_normalize_like_the_other_criteria():
    net = known_layer()
    raw, normed = APoZ(normalize=None), APoZ()
    fed(raw, net, X); fed(normed, net, X)
    r = raw(net[0], Filter())
    torch.testing.assert_close(normed(net[0], Filter()), r / r.abs().mean())

# ---------------------------------------------------------------- which output
class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.bn, self.fc = nn.Conv2d(3, 6, 3), nn.Conv2d(6, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2)
    def forward(self, x):
        x = F.relu(self.c1(x), inplace=True)
        x = F.leaky_relu(self.bn(self.c2(x)), negative_slope=0.2)
        return self.fc(x.mean((2, 3))).sigmoid()

class Untraceable(nn.Module):
    "Control flow on a tensor value: fx cannot trace it, registration order is used"
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.act, self.fc = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU6(), nn.Linear(4, 2)
    def forward(self, x):
        x = self.act(self.bn(self.conv(x)))
        if x.sum() > 0: x = x * 1
        return self.fc(x.mean((2, 3)))

def test_observed_outputs():
    obs = observed_outputs(Functional())
    assert obs['c1'].act is torch.relu and obs['c2'].module is not None
    torch.testing.assert_close(obs['c2'].act(torch.tensor([-1., 2.])), torch.tensor([-.2, 2.]))
    assert obs['fc'].act is torch.sigmoid
    m = Untraceable()
    obs = observed_outputs(m)
    assert obs['conv'].module is m.bn and isinstance(obs['conv'].act, nn.ReLU6)
    with pytest.raises(Exception): observed_outputs(m, method='fx')
    rn = torchvision.models.resnet18()
    obs = observed_outputs(rn)
    assert obs['layer2.0.conv1'].module is rn.layer2[0].bn1 and obs['layer2.0.conv1'].act is torch.relu
    assert obs['layer2.0.conv2'].module is rn.layer2[0].bn2 and obs['layer2.0.conv2'].act is None
    assert observed_outputs(rn, method='order')['layer2.0.conv2'].act is None
    with pytest.raises(ValueError, match="method must be"): observed_outputs(rn, method='trace')

# ---------------------------------------------------------------- hooks: forward untouched, removal, copies
@pytest.mark.parametrize('cls', ACTIVATION)
@pytest.mark.parametrize('model_fn', [digits_cnn, Functional, lambda: torchvision.models.resnet18(num_classes=4)], ids=['digits', 'functional', 'resnet18'])
def test_hooks_leave_the_forward_bit_identical(cls, model_fn):
    "outputs and gradients in training mode (in-place ReLUs included) are bit-identical with and without the hooks"
    torch.manual_seed(0)
    plain = model_fn().train()
    hooked = copy.deepcopy(plain)
    sp = Sparsifier(hooked, 'filter', cls())
    assert len(_stat_hooks(hooked)) == 1
    x = torch.randn(2, *((1, 8, 8) if model_fn is digits_cnn else (3, 32, 32)))
    for _ in range(2):
        o1, o2 = plain(x), hooked(x)
        assert torch.equal(o1, o2)
        o1.square().sum().backward(); o2.square().sum().backward()
        sp.update()
    for (n, p1), p2 in zip(plain.named_parameters(), hooked.parameters()): assert torch.equal(p1.grad, p2.grad), n
    sp.remove()
    assert _stat_hooks(hooked) == {}
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in hooked.modules())

def test_statistics_only_in_training_mode_and_one_batch_per_update():
    net, am = known_layer(), ActivationMean(normalize=None)
    sp = Sparsifier(net, 'filter', am, keep_classifier=True)
    net.eval(); net(X); sp.update(); net.train()
    with pytest.raises(RuntimeError, match='no activation statistics'): am(net[0], Filter())
    net(X); net(X); net(X)   # no update in between: only the first is counted, and scoring says so
    with pytest.warns(UserWarning, match='2 training batch'): am(net[0], Filter())
    assert am.statistics(net[0])[1:] == (4, 1)

def test_window_restarts_after_scoring():
    net, am = known_layer(), ActivationMean(normalize=None)
    sp = fed(am, net, X, X)
    assert am.statistics(net[0])[2] == 2
    am(net[0], Filter()); am(net[0], Filter())    # scoring twice reuses the window
    assert am.statistics(net[0])[2] == 2
    net(-X); sp.update()
    assert am.statistics(net[0])[2] == 1
    torch.testing.assert_close(am(net[0], Filter()), torch.tensor([.5, 1., 0., 1.]))
    am.reset()
    with pytest.raises(RuntimeError, match='no activation statistics'): am(net[0], Filter())

def test_deepcopy_and_pickle_keep_the_hooks_working():
    torch.manual_seed(0)
    model = digits_cnn()
    sp = Sparsifier(model, 'filter', APoZ(), context='global')
    x = torch.randn(16, 1, 8, 8)
    collect_statistics(sp, [x])
    for sp2 in (copy.deepcopy(sp), pickle.loads(pickle.dumps(sp))):
        (owner,) = _stat_hooks(sp2.model)
        assert owner is sp2.criterion and owner is not sp.criterion
        with pytest.raises(RuntimeError, match="no activation statistics for layer '0.0'"): sp2.prune(0.5)  # statistics are not copied
        collect_statistics(sp2, [x, x])
        assert sp2.criterion.statistics(sp2.model[0][0])[2] == 2
        sp2.prune(0.5)
        sp2.remove()
        assert _stat_hooks(sp2.model) == {}
    assert sp.criterion.statistics(model[0][0])[2] == 1 and len(_stat_hooks(model)) == 1
    copied = copy.deepcopy(model)
    torch.testing.assert_close(copied(x), model(x))

def test_strip_removes_the_hooks():
    from fastprune.compact import strip
    model = digits_cnn()
    Sparsifier(model, 'filter', Wanda())
    strip(model)
    assert _stat_hooks(model) == {}

def test_setup_twice_replaces_the_hooks():
    model, crit = digits_cnn(), ActivationMean()
    Sparsifier(model, 'filter', crit)
    Sparsifier(model, 'filter', crit)
    assert len(_stat_hooks(model)[crit]) == 3
    assert sum(len(m._forward_hooks) for m in model.modules()) == 3

def test_mixed_precision_sums_are_float32():
    model = digits_cnn()
    crits = [c() for c in ACTIVATION]
    sps = [Sparsifier(model, 'filter', c) for c in crits]
    with torch.autocast('cpu', dtype=torch.bfloat16): model(torch.randn(4, 1, 8, 8))
    for sp, c in zip(sps, crits):
        sp.update()
        assert all(s.dtype == torch.float32 for s in c.statistics(model[1][0])[0])

# ---------------------------------------------------------------- collect_statistics
def test_collect_statistics_data_forms():
    torch.manual_seed(0)
    xs = torch.randn(32, 1, 8, 8)
    ys = torch.randint(0, 10, (32,))
    ref = None
    forms = {'tensor': xs, 'list of tensors': [xs[:16], xs[16:]], 'torch loader': torch.utils.data.DataLoader(
                 torch.utils.data.TensorDataset(xs, ys), batch_size=16), 'dicts': [{'input': xs[:16]}, {'input': xs[16:]}]}
    class Kw(nn.Module):
        def __init__(self): super().__init__(); self.net = digits_cnn()
        def forward(self, input): return self.net(input)
    for name, data in forms.items():
        torch.manual_seed(1)
        model = Kw() if name == 'dicts' else digits_cnn()
        crit = ActivationMean(normalize=None)
        sp = Sparsifier(model, 'filter', crit)
        assert collect_statistics(sp, data) is sp
        conv = model.get_submodule('net.0.0' if name == 'dicts' else '0.0')
        s = crit(conv, Filter())
        if ref is None: ref = s
        torch.testing.assert_close(s, ref, msg=name)   # the same 32 images, whatever the packaging
        assert crit.statistics(conv)[1] == 32 * 64

def test_collect_statistics_fastai_and_limits():
    dls = digits_dls(bs=16)
    learn = digits_learner(dls=dls)
    crit = APoZ()
    sp = Sparsifier(learn.model, 'filter', crit)
    learn.model.train()
    bn = learn.model[0][1]
    before = bn.running_mean.clone()
    collect_statistics(learn, dls, n_batches=3)              # a Learner, a DataLoaders (its train loader)
    assert crit.statistics(learn.model[0][0])[2] == 3
    assert learn.model.training and torch.equal(bn.running_mean, before)  # eval mode while collecting, modes restored
    collect_statistics(learn.model, dls.valid, n_batches=2)   # scoring (statistics) closed the window: a new one
    assert crit.statistics(learn.model[0][0])[2] == 2
    with pytest.raises(ValueError, match='n_batches must be'): collect_statistics(sp, dls.train, n_batches=0)
    with pytest.raises(ValueError, match='gave no batch'): collect_statistics(sp, [])
    with pytest.raises(ValueError, match='no activation criterion'): collect_statistics(digits_cnn(), [torch.zeros(1, 1, 8, 8)])
    with pytest.raises(TypeError, match='expected a model'): collect_statistics(object(), [])

# ---------------------------------------------------------------- in PruneCallback; by name; errors
@pytest.mark.parametrize('cls', ACTIVATION)
@pytest.mark.parametrize('context', ['local', 'global'])
def test_prune_callback_reaches_the_exact_target(cls, context):
    from fastai.callback.progress import ProgressCallback
    from fastai.callback.schedule import fit_one_cycle
    from fastprune.callback import PruneCallback
    torch.manual_seed(0)
    gran = 'filter' if cls in FILTER_ONLY else 'weight'
    cb = PruneCallback(0.5, gran, cls(), context=context, report=False)
    learn = digits_learner(dls=digits_dls(bs=128), cbs=cb)
    learn.remove_cb(ProgressCallback)
    with learn.no_logging(): learn.fit_one_cycle(1, 1e-2)
    sp = cb.sparsifier
    assert sum(int(u.pruned().sum()) for u in sp.units) == sp.target_groups(0.5)
    assert sp.shortfall == 0
    with pytest.raises(ValueError, match='needs statistics of training batches'):
        PruneCallback(0.5, gran, cls(), schedule=lambda p: 1.)

def test_wanda_nm_and_all_granularities():
    model = digits_cnn()
    for g in (Weight(), Kernel(), Filter(), Channel(), NM(2, 4)):
        m = copy.deepcopy(model)
        sp = Sparsifier(m, g, Wanda(), exclude=['0.0'] if isinstance(g, NM) else None)  # 9 inputs per filter: no 2:4
        collect_statistics(sp, [torch.randn(8, 1, 8, 8)]).prune(0.5)
        assert abs(sp.sparsity() - 0.5) < 0.05, (g, sp.sparsity())

def test_names_and_lazy_import():
    assert type(as_criterion('activation')) is ActivationMean and type(as_criterion('redundancy')) is ActivationRedundancy
    assert {'activation', 'apoz', 'wanda', 'redundancy'} <= set(CRITERIA)
    code = ("import sys; from fastprune.criteria import as_criterion; assert 'fastprune.activations' not in sys.modules; "
            "print(type(as_criterion('apoz')).__name__)")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == 'APoZ', out.stderr
    with pytest.raises(ValueError, match="'apoz'"): as_criterion('apozz')

@pytest.mark.parametrize('cls', FILTER_ONLY)
@pytest.mark.parametrize('gran', [Weight(), Kernel(), Channel(), NM(2, 4)])
def test_unsupported_granularities(cls, gran):
    with pytest.raises(ValueError, match=rf"layer '1.0'.*{cls.__name__} scores a layer's output channels.*needs Filter\(\), got {type(gran).__name__}"):
        Sparsifier(digits_cnn(), gran, cls(), exclude=['0.0'])  # (the first conv's 9 inputs per filter rule out 2:4)

@pytest.mark.parametrize('cls', ACTIVATION)
def test_scoring_before_statistics(cls):
    model = digits_cnn()
    sp = Sparsifier(model, 'filter', cls())
    with pytest.raises(RuntimeError, match=rf"{cls.__name__} has no activation statistics for layer '0.0'.*collect_statistics"):
        sp.prune(0.5)
    with pytest.raises(RuntimeError, match="call setup"): cls()(nn.Conv2d(1, 2, 3), Filter())

@pytest.mark.slow
def test_criteria_benchmark_runs(capsys):
    "benchmarks/criteria.py runs end to end on a tiny budget and prints both tables with their goal"
    import importlib.util, pathlib
    path = pathlib.Path(__file__).parent.parent/'benchmarks'/'criteria.py'
    spec = importlib.util.spec_from_file_location('bench_criteria', path)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        mod.main(epochs=1, seeds=1, rounds=2, threads=1)
    out = capsys.readouterr().out
    for name in mod.CRITERIA: assert any(l.startswith(name) for l in out.splitlines()), name
    assert 'cost of collecting statistics' in out and out.count('<= 1.10x') == 4
