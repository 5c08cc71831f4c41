"Tests of fastprune.criteria: hand-computed scores, accumulation, normalisation, errors and following_bn on the zoo"
import math, pickle, pytest, torch, torchvision
from torch import nn
from hypothesis import given, settings, strategies as st
from fastprune.granularity import *
from fastprune.criteria import *
from fastprune.data import digits_cnn

inf = float('inf')

def tiny_linear():
    lin = nn.Linear(3, 2, bias=False)
    with torch.no_grad(): lin.weight.copy_(torch.tensor([[1., -2., 0.5], [3., 0., -1.]]))
    return lin

BATCHES = [torch.tensor([[1., 2., -1.]]), torch.tensor([[0., -1., 2.], [1., 1., 1.]])]

def run(lin, *crits, gran=None):
    "Two backward passes of loss = sum of outputs, calling update after each"
    for x in BATCHES:
        lin.zero_grad()
        lin(x).sum().backward()
        for c in crits: c.update(lin, gran)

# with loss = sum(outputs), grad of w[o, i] = sum_b x[b, i] for every o:
# batch 1: grad rows [1, 2, -1]; batch 2: [1, 0, 3]
# w*grad batch 1: [[1, -4, -.5], [3, 0, 1]]; batch 2: [[1, 0, 1.5], [3, 0, -3]]
WG1 = torch.tensor([[1., -4., -.5], [3., 0., 1.]])
WG2 = torch.tensor([[1., 0., 1.5], [3., 0., -3.]])

def test_gradient_by_hand():
    lin, g = tiny_linear(), Gradient(normalize=None)
    run(lin, g)
    expected = torch.tensor([[1., 2., 1.], [3., 0., 2.]])   # mean of |WG1| and |WG2|
    torch.testing.assert_close(g.element_scores(lin), expected)
    torch.testing.assert_close(g(lin, Filter()), torch.tensor([4., 5.]))
    torch.testing.assert_close(g(lin, Channel()), torch.tensor([4., 2., 3.]))
    torch.testing.assert_close(g(lin, Weight()), expected.flatten())

def test_taylor_by_hand():
    lin, tf, tc = tiny_linear(), Taylor(normalize=None), Taylor(normalize=None)
    run(lin, tf, gran=Filter()); run(lin, tc, gran=Channel())
    # filter sums: batch 1 [-3.5, 4], batch 2 [2.5, 0] -> squared and averaged
    torch.testing.assert_close(tf(lin, Filter()), torch.tensor([(12.25 + 6.25)/2, (16. + 0.)/2]))
    # channel sums: batch 1 [4, -4, .5], batch 2 [4, 0, -1.5]
    torch.testing.assert_close(tc(lin, Channel()), torch.tensor([16., 8., (.25 + 2.25)/2]))
    torch.testing.assert_close(tf(lin, Weight()), (WG1**2 + WG2**2).flatten()/2)
    with pytest.raises(RuntimeError, match=r"update\(module, Channel\(\)\)"): tf(lin, Channel())

def test_movement_by_hand():
    lin, mv = tiny_linear(), Movement(normalize=None)
    run(lin, mv)
    torch.testing.assert_close(mv.element_scores(lin), -(WG1 + WG2))
    torch.testing.assert_close(mv(lin, Filter()), -(WG1 + WG2).sum(1))

@settings(max_examples=10)
@given(st.integers(0, 2**31-1), st.integers(1, 3))
def test_gradient_and_taylor_match_direct_computation(seed, n_batches):
    "On a random conv, scores equal a direct per-batch computation from the gradients"
    torch.manual_seed(seed)
    conv = nn.Conv2d(2, 3, 3)
    crits = [Gradient(normalize=None), Taylor(normalize=None), Movement(normalize=None)]
    wgs = []
    for _ in range(n_batches):
        conv.zero_grad()
        conv(torch.randn(2, 2, 5, 5)).pow(2).mean().backward()
        wgs.append(conv.weight.detach() * conv.weight.grad)
        for c in crits: c.update(conv, Filter())
    wg = torch.stack(wgs)
    torch.testing.assert_close(crits[0](conv, Filter()), wg.abs().mean(0).sum((1, 2, 3)))
    torch.testing.assert_close(crits[1](conv, Filter()), wg.sum((2, 3, 4)).pow(2).mean(0))
    torch.testing.assert_close(crits[2](conv, Filter()), -wg.sum(0).sum((1, 2, 3)))

def test_grad_criteria_errors_reset_and_frozen():
    lin = tiny_linear()
    for c in (Gradient(normalize=None), Taylor(normalize=None), Movement(normalize=None)):
        assert c.needs_grad
        with pytest.raises(RuntimeError, match="needs gradients"): c(lin, Filter())
        lin.weight.grad = None
        c.update(lin, Filter())           # a frozen layer (no .grad) is skipped, not an error
        with pytest.raises(RuntimeError, match="call update"): c(lin, Filter())
        run(lin, c, gran=Filter())
        c(lin, Filter())
        c.reset()
        with pytest.raises(RuntimeError): c(lin, Filter())
    assert not Magnitude().needs_grad and not Random().needs_grad

def test_grad_criteria_restart_when_shape_changes():
    "After compaction changed a layer's weight shape, accumulation restarts instead of failing"
    lin, g = tiny_linear(), Gradient(normalize=None)
    run(lin, g)
    lin.weight = nn.Parameter(lin.weight.detach()[:1].clone())
    lin.out_features = 1
    run(lin, g)
    assert g.element_scores(lin).shape == (1, 3)

def test_criterion_pickles_without_stats():
    lin, g = tiny_linear(), Gradient(normalize='max')
    run(lin, g)
    g2 = pickle.loads(pickle.dumps(g))
    assert g2.normalize == 'max'
    with pytest.raises(RuntimeError): g2(lin, Filter())

# ---------------------------------------------------------------- magnitude and normalisation
@pytest.mark.parametrize('p', [1, 2, 3, 0.5])
def test_magnitude_lp(p):
    conv = nn.Conv2d(3, 4, 3)
    w = conv.weight.detach()
    torch.testing.assert_close(Magnitude(p, normalize=None)(conv, Filter()), w.flatten(1).norm(p=p, dim=1))
    torch.testing.assert_close(Magnitude(p, normalize=None)(conv, Channel()), w.transpose(0, 1).flatten(1).norm(p=p, dim=1))
    torch.testing.assert_close(Magnitude(p, normalize=None)(conv, Weight()), w.abs().flatten())

def test_magnitude_nm_scores():
    lin = nn.Linear(4, 1)
    with torch.no_grad(): lin.weight.copy_(torch.tensor([[1., -2., 3., -4.]]))
    torch.testing.assert_close(Magnitude(normalize=None)(lin, NM(2, 4)), torch.tensor([3.]))
    torch.testing.assert_close(Magnitude(2, normalize=None)(lin, NM(2, 4)), torch.tensor([math.sqrt(5.)]))

@pytest.mark.parametrize('norm,stat', [('mean', lambda f: f.mean()), ('max', lambda f: f.max()),
                                       ('sum', lambda f: f.sum()), ('l2', lambda f: f.norm())])
def test_normalize(norm, stat):
    conv = nn.Conv2d(3, 8, 3)
    raw = Magnitude(normalize=None)(conv, Filter())
    s = Magnitude(normalize=norm)(conv, Filter())
    torch.testing.assert_close(s, raw / stat(raw))
    assert torch.equal(s.argsort(), raw.argsort())
    c = Magnitude(normalize=norm)
    out = c.normalise(torch.tensor([-inf, 2., -4.]))   # -inf ignored and kept, sign kept
    f = torch.tensor([2., 4.])
    torch.testing.assert_close(out, torch.tensor([-inf, 2., -4.]) / stat(f))
    assert torch.equal(c.normalise(torch.zeros(3)), torch.zeros(3))        # no division by zero
    assert torch.equal(c.normalise(torch.full((2,), -inf)), torch.full((2,), -inf))

def test_normalize_makes_layers_comparable():
    small, big = nn.Conv2d(3, 16, 3), nn.Conv2d(128, 16, 3)
    with torch.no_grad(): small.weight.uniform_(-1, 1); big.weight.uniform_(-1, 1)
    raw = torch.cat([Magnitude(normalize=None)(m, Filter()) for m in (small, big)])
    # pruning the 16 lowest raw scores (a global 50% threshold) empties the small layer ...
    assert sorted(raw.argsort()[:16].tolist()) == list(range(16))
    normed = torch.cat([Magnitude(normalize='mean')(m, Filter()) for m in (small, big)])
    # ... while normalised scores prune both layers
    low = normed.argsort()[:16]
    assert 0 < (low < 16).sum() < 16

def test_bad_arguments():
    with pytest.raises(ValueError, match="'median'"): Magnitude(normalize='median')
    with pytest.raises(ValueError, match="p must be"): Magnitude(p=0)
    with pytest.raises(TypeError, match="callable"): as_criterion(3)

def test_neg_inf_group_scores_stay_neg_inf():
    "-inf element scores (already pruned) give -inf group scores, never NaN, even through `post`"
    conv = nn.Conv2d(2, 3, 2)
    def scores(m):
        s = m.weight.detach().abs().clone(); s[0] = -inf; return s
    class Sqrt(Criterion):
        def element_scores(self, m): return scores(m)
        def post(self, s): return s.sqrt()
    for crit in (as_criterion(scores), Sqrt(), Sqrt(normalize='max')):
        for g in (Filter(), Channel(), Kernel(), Weight(), NM(1, 4)):
            out = crit(conv, g)
            assert not out.isnan().any(), (crit, g)
        assert crit(conv, Filter())[0] == -inf and crit(conv, Filter())[1:].isfinite().all()

# ---------------------------------------------------------------- random, FPGM, user criteria
def test_random_reproducible_and_order_independent():
    model = digits_cnn()
    layers = {'0.0': model[0][0], '1.0': model[1][0], '5': model[5]}
    def scores(seed, order):
        r = Random(seed); r.setup(model, layers)
        return {n: r(layers[n], Filter()) for n in order}
    a, b = scores(3, ['0.0', '1.0', '5']), scores(3, ['5', '1.0', '0.0'])
    assert all(torch.equal(a[n], b[n]) for n in layers)
    c = scores(4, list(layers))
    assert not torch.equal(a['1.0'], c['1.0'])
    assert torch.equal(Random(3).element_scores(model[5]), Random(3).element_scores(model[5]))
    # two layers of the same shape get different scores once their names are known
    m1, m2 = nn.Linear(4, 4), nn.Linear(4, 4)
    r = Random(0); r.setup(None, {'a': m1, 'b': m2})
    assert not torch.equal(r(m1, Filter()), r(m2, Filter()))
    assert r(m1, NM(2, 4)).shape == (4,)

def test_geometric_median_brute_force():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, 3)
    F = conv.weight.detach().flatten(1)
    ref = torch.stack([sum((F[i] - F[j]).norm() for j in range(6)) for i in range(6)])
    torch.testing.assert_close(GeometricMedian(normalize=None)(conv, Filter()), ref, rtol=1e-4, atol=1e-4)
    # fully masked filters are left out of the distances
    mask = torch.ones_like(conv.weight, dtype=torch.bool); mask[2] = False
    conv.register_buffer('prune_mask', mask)
    ref2 = torch.stack([sum((F[i] - F[j]).norm() for j in range(6) if j != 2) for i in range(6)])
    torch.testing.assert_close(GeometricMedian(normalize=None)(conv, Filter()), ref2, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="needs Filter"): GeometricMedian()(conv, Weight())
    ct = nn.ConvTranspose2d(4, 5, 2)
    assert GeometricMedian(normalize=None)(ct, Filter()).shape == (5,)

def test_as_criterion():
    conv = nn.Conv2d(2, 3, 3)
    m = Magnitude()
    assert as_criterion(m) is m and isinstance(as_criterion(Magnitude), Magnitude)
    def sq(module): return module.weight.detach() ** 2
    c = as_criterion(sq, normalize='max')
    s = c(conv, Filter())
    torch.testing.assert_close(s, Magnitude(2)(conv, Filter())**2 / (Magnitude(2)(conv, Filter())**2).max())
    assert not c.needs_grad and as_criterion(sq, needs_grad=True).needs_grad
    with pytest.raises(ValueError, match="shaped like the weight"): as_criterion(lambda m: m.weight[0])(conv, Filter())
    assert 'sq' in repr(c) and repr(Magnitude(2, normalize='mean')) == "Magnitude(p=2, normalize='mean')"

# ---------------------------------------------------------------- BatchNorm
def test_bnscale():
    model = digits_cnn()
    layers = {'0.0': model[0][0], '1.0': model[1][0], '2.0': model[2][0], '5': model[5]}
    with torch.no_grad(): model[1][1].weight.copy_(torch.linspace(-2, 2, 64))
    bs = BNScale(normalize=None)
    with pytest.raises(RuntimeError, match="setup"): bs(model[1][0], Filter())
    bs.setup(model, layers)
    torch.testing.assert_close(bs(model[1][0], Filter()), torch.linspace(-2, 2, 64).abs())
    assert bs.element_scores(model[1][0]).shape == model[1][0].weight.shape
    with pytest.raises(ValueError, match="needs Filter"): bs(model[1][0], Channel())
    with pytest.raises(ValueError, match="'5'"): bs(model[5], Filter())
    fb = BNScale(normalize=None, fallback=Magnitude(normalize=None)); fb.setup(model, layers)
    torch.testing.assert_close(fb(model[5], Filter()), Magnitude(normalize=None)(model[5], Filter()))

EXPECTED = {'resnet18': 20, 'resnet50': 53, 'mobilenet_v2': 52, 'mobilenet_v3_small': 34, 'densenet121': 59,
            'vgg11_bn': 8, 'efficientnet_b0': 49}
ZOO = list(EXPECTED)

def hooked_truth(model, layers, x):
    "Reference: the BatchNorms whose input tensor *is* a layer's output tensor, seen during a forward pass"
    outs, res, hs = {}, {}, []
    def post(n):
        def hook(mod, inp, out): outs[id(out)] = (n, out)   # keep `out` alive so that its id is not reused
        return hook
    for n, m in layers.items(): hs.append(m.register_forward_hook(post(n)))
    for bn in model.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm):
            def pre(mod, inp):
                n = outs.get(id(inp[0]), (None,))[0]
                if n is not None and mod.num_features == layer_dims(layers[n])[1]: res.setdefault(n, mod)
            hs.append(bn.register_forward_pre_hook(pre))
    with torch.no_grad(): model.eval()(x)
    for h in hs: h.remove()
    return res

def conv_linear(model): return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}

@pytest.mark.parametrize('name', ZOO)
def test_following_bn_zoo(name):
    with torch.device('meta'): model = getattr(torchvision.models, name)(weights=None)   # no init cost
    layers = conv_linear(model)
    found = following_bn(model, layers)
    truth = hooked_truth(model, layers, torch.randn(1, 3, 64, 64, device='meta'))
    assert {n: id(b) for n, b in found.items()} == {n: id(b) for n, b in truth.items()}
    # every conv with its own BN; not classifiers, squeeze-excitation convs, DenseNet's conv2/transition convs
    assert len(found) == EXPECTED[name]
    assert all(b.num_features == layer_dims(layers[n])[1] for n, b in found.items())

def test_following_bn_known_pairs():
    with torch.device('meta'): model = torchvision.models.resnet18(weights=None)
    found = following_bn(model)
    assert found['conv1'] is model.bn1 and found['layer1.0.conv2'] is model.layer1[0].bn2
    assert found['layer2.0.downsample.0'] is model.layer2[0].downsample[1] and 'fc' not in found
    with torch.device('meta'): d = torchvision.models.densenet121(weights=None)
    f = following_bn(d)
    assert f['features.denseblock1.denselayer1.conv1'] is d.features.denseblock1.denselayer1.norm2
    assert 'features.denseblock1.denselayer1.conv2' not in f and 'features.transition1.conv' not in f

@pytest.mark.parametrize('name', ['digits', 'resnet18', 'mobilenet_v2', 'vgg11_bn'])
def test_following_bn_order_fallback(name):
    "Registration order gives the same answer as tracing on the usual conv-bn models"
    with torch.device('meta'): model = digits_cnn() if name == 'digits' else getattr(torchvision.models, name)(weights=None)
    assert following_bn(model, method='order') == following_bn(model, method='fx')

def test_following_bn_untraceable_model_falls_back():
    class Dyn(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2)
        def forward(self, x):
            if x.sum() > 0: x = x * 2     # data-dependent control flow: torch.fx cannot trace it
            return self.fc(self.bn(self.conv(x)).mean((2, 3)))
    m = Dyn()
    with pytest.raises(Exception): following_bn(m, method='fx')
    assert following_bn(m) == {'conv': m.bn}
    with pytest.raises(ValueError, match="method"): following_bn(m, method='graph')

def test_following_bn_digits_and_linear_bn():
    model = digits_cnn()
    assert following_bn(model, {'first': model[0][0], 'fc': model[5]}) == {'first': model[0][1]}
    mlp = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    assert following_bn(mlp) == {'0': mlp[1]}
