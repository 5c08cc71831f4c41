"Tests for fastprune.compact: coupled units, exact compaction over torchvision's zoo, round trips and errors"
import copy, io, warnings
import pytest, torch, torch.nn as nn, torchvision
from hypothesis import given, settings, HealthCheck, strategies as st
from fastprune.compact import *
from fastprune.sparsifier import Sparsifier
from fastprune.units import *
from fastprune.granularity import Filter, Channel, Weight
from fastprune.criteria import Magnitude, BNScale, Taylor

def n_params(m): return sum(p.numel() for p in m.parameters())

def lively(model, seed=1):
    "Random BatchNorm statistics/affine and a larger classifier init, so that outputs are O(1) and errors show"
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5, generator=g); m.bias.normal_(0, 0.2, generator=g)
                m.running_mean.normal_(0, 0.1, generator=g); m.running_var.uniform_(0.5, 1.5, generator=g)
            if isinstance(m, nn.Linear): m.weight.normal_(0, 0.05, generator=g)
    return model.eval()

def prune_and_compact(model, x, criterion, sparsity=0.4, context='global', granularity=None):
    "Prune with coupled units, apply the masks, compact: (masked output, compacted model, compacted output, sparsifier)"
    sp = Sparsifier(model, granularity or Filter(), criterion, context=context, example_inputs=x)
    sp.prune(sparsity); sp.apply_masks()
    with torch.no_grad(): ref = model(x)
    with warnings.catch_warnings():
        warnings.simplefilter('error')    # coupled masks never leave uncoupled channels behind
        small = compact(model, x)
    with torch.no_grad(): out = small(x)
    return ref, small, out, sp

ZOO = [('resnet18', False), ('mobilenet_v2', False), ('mobilenet_v3_small', False), ('vgg11_bn', True),
       ('resnet50', True), ('efficientnet_b0', True), ('densenet121', True)]

@pytest.mark.parametrize('name', [pytest.param(n, marks=pytest.mark.slow) if slow else n for n, slow in ZOO])
def test_zoo(name):
    x = torch.randn(1, 3, 64, 64)
    for crit in (Magnitude(), BNScale(fallback=Magnitude())):
        torch.manual_seed(0)
        model = lively(getattr(torchvision.models, name)(weights=None))
        dense = n_params(model)
        ref, small, out, sp = prune_and_compact(model, x, crit)
        assert any(isinstance(u, CoupledUnit) for u in sp.units)
        assert n_params(small) < 0.85 * dense, (name, crit, n_params(small), dense)
        assert ref.abs().max() > 1e-2                       # the comparison is not between two ~0 tensors
        assert out.shape == ref.shape
        assert (out - ref).abs().max() <= 1e-4, (name, crit, float((out - ref).abs().max()))
        assert not [n for n, _ in small.named_buffers() if n.endswith('prune_mask')]
        assert all('prune_mask' in m._buffers for m in sp.layers.values())   # the masked model is untouched

def test_coupled_masks_resnet():
    "Residual producers share the same pruned channels; consumers' input slices are masked too; local context works"
    m = lively(torchvision.models.resnet18())
    x = torch.randn(1, 3, 32, 32)
    sp = Sparsifier(m, Filter(), Magnitude(), context='local', example_inputs=x)
    assert all(isinstance(u, CoupledUnit) for u in sp.units) and len(sp.units) == 12
    sp.prune(0.5); sp.apply_masks()
    dead_out = lambda l: set((~l.prune_mask.flatten(1).any(1)).nonzero().flatten().tolist())
    dead_in = lambda l: set((~l.prune_mask.transpose(0, 1).flatten(1).any(1)).nonzero().flatten().tolist())
    s = dead_out(m.layer2[0].conv2)
    assert len(s) == 64
    assert s == dead_out(m.layer2[1].conv2) == dead_out(m.layer2[0].downsample[0])
    assert s == dead_in(m.layer2[1].conv1) == dead_in(m.layer3[0].conv1) == dead_in(m.layer3[0].downsample[0])
    assert (m.layer2[0].bn2.weight[sorted(s)] == 0).all() and (m.layer2[0].downsample[1].bias[sorted(s)] == 0).all()
    for u in sp.units: assert int(u.pruned().sum()) == round(0.5 * u.n)
    with torch.no_grad(): ref = m(x)
    small = compact(m, x)
    assert small.layer2[0].conv2.out_channels == 64 and small.layer3[0].conv1.in_channels == 64
    assert small.fc.in_features == 256
    with torch.no_grad(): assert (small(x) - ref).abs().max() <= 1e-4

def test_gradient_criterion_and_channel_granularity():
    x = torch.randn(2, 3, 32, 32)
    m = lively(torchvision.models.resnet18())
    sp = Sparsifier(m, Filter(), Taylor(), context='global', example_inputs=x)
    m(x).sum().backward(); sp.update()
    sp.prune(0.3); sp.apply_masks()
    with torch.no_grad(): ref = m(x)
    with torch.no_grad(): assert (compact(m, x)(x) - ref).abs().max() <= 1e-4
    m = lively(torchvision.models.mobilenet_v2())
    ref, small, out, sp = prune_and_compact(m, x, Magnitude(), 0.3, granularity=Channel())
    assert n_params(small) < n_params(m)
    assert (out - ref).abs().max() <= 1e-4

def test_save_load_trace_export():
    x = torch.randn(1, 3, 32, 32)
    m = lively(torchvision.models.resnet18())
    ref, small, out, _ = prune_and_compact(m, x, Magnitude(), 0.5)
    buf = io.BytesIO(); torch.save(small, buf); buf.seek(0)
    re = torch.load(buf, weights_only=False)
    assert type(re) is type(small) and not hasattr(re.conv1, 'prune_mask')
    with torch.no_grad(): assert torch.allclose(re(x), out, atol=1e-6)
    with pytest.raises(RuntimeError, match='size mismatch'): torchvision.models.resnet18().load_state_dict(small.state_dict())
    tr = torch.jit.trace(small, x)
    with torch.no_grad(): assert torch.allclose(tr(x), out, atol=1e-5)
    ep = torch.export.export(small, (x,))
    with torch.no_grad(): assert torch.allclose(ep.module()(x), out, atol=1e-5)

def test_inplace_and_training_mode():
    x = torch.randn(1, 3, 32, 32)
    m = lively(torchvision.models.resnet18())
    Sparsifier(m, Filter(), example_inputs=x).prune(0.5)
    m.train()
    small = compact(m, x, inplace=True)
    assert small is m and small.training
    assert not [n for n, _ in m.named_buffers() if n.endswith('prune_mask')]
    assert m.layer1[0].conv1.out_channels == 32

def test_uncoupled_masks_are_kept_with_a_warning():
    "Without example_inputs each layer is pruned alone: residual channels masked in one branch only cannot go"
    x = torch.randn(1, 3, 32, 32)
    m = lively(torchvision.models.resnet18())
    sp = Sparsifier(m, Filter(), Magnitude())
    assert all(isinstance(u, LayerUnit) for u in sp.units)
    sp.prune(0.5); sp.apply_masks()
    with torch.no_grad(): ref = m(x)
    with pytest.warns(UserWarning, match='kept .* channels'): small, stats = compact(m, x, return_stats=True)
    assert stats['kept_uncoupled'] > 0 and stats['removed'] > 0
    with torch.no_grad(): assert (small(x) - ref).abs().max() <= 1e-4

def test_masked_outputs_are_kept():
    "Rows of the classifier are model outputs: masked, they are kept (with a warning) so the output shape holds"
    x = torch.randn(2, 10)
    m = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 5)).eval()
    sp = Sparsifier(m, Filter(), keep_classifier=True); sp.prune(0.4); sp.apply_masks()
    with torch.no_grad(): ref = m(x)
    with pytest.warns(UserWarning, match='outputs of the model'): small, stats = compact(m, x, return_stats=True)
    assert stats['kept_output'] == 2 and small[2].out_features == 5 and small[0].out_features == 32 - 13
    with torch.no_grad(): assert (small(x) - ref).abs().max() <= 1e-4

def test_errors():
    x = torch.randn(1, 3, 32, 32)
    m = torchvision.models.resnet18().eval()
    Sparsifier(m, Filter(), example_inputs=x).prune(0.3)
    with pytest.raises(ValueError, match='example_inputs'): compact(m)
    with pytest.raises(ValueError, match='could not run the model'): compact(m, torch.randn(1, 5, 32, 32))
    with pytest.raises(TypeError, match='nn.Module'): compact(lambda x: x, x)
    with pytest.raises(ValueError, match='not a module'): compact(m, x, ignored_layers=['nope'])
    with pytest.raises(ValueError, match='example_inputs'): coupled_units(m, {'conv1': m.conv1})
    u = torchvision.models.resnet18().eval()
    Sparsifier(u, Weight()).prune(0.5)
    with pytest.raises(ValueError, match=r'not channel-structured.*Filter\(\)'): compact(u, x)
    d = torchvision.models.resnet18().eval()
    assert n_params(compact(d, x)) == n_params(d)       # no masks at all: a plain copy

class Scale(nn.Module):
    "A layer Torch-Pruning has no rule for: it uses its own parameter on the channels (and maps 0 to 1)"
    def __init__(self, c): super().__init__(); self.w = nn.Parameter(torch.full((1, c, 1, 1), 2.))
    def forward(self, x): return x * self.w + 1

class Shuffle(nn.Module):
    "A channel permutation hidden in reshapes, which Torch-Pruning's graph cannot follow"
    def forward(self, x): b, c, h, w = x.shape; return x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)

def _net(mid):
    return lively(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), mid, nn.Conv2d(8, 8, 3, padding=1),
                                nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)))

def test_layers_torch_pruning_cannot_handle():
    x = torch.randn(2, 3, 16, 16)
    m = _net(Scale(8))
    with pytest.warns(UserWarning, match=r"1 selected layers are left dense: '0'"):   # coupled mode: '0' feeds Scale's raw parameter
        sp = Sparsifier(m, Filter(), example_inputs=x)
    assert sp.left_dense == ['0'] and 'prune_mask' not in m[0]._buffers and list(sp.layers) == ['4']
    sp.prune(0.5)
    with torch.no_grad(): ref = m(x)
    with torch.no_grad(): assert (compact(m, x)(x) - ref).abs().max() <= 1e-4
    m = _net(Scale(8))
    sp = Sparsifier(m, Filter()); sp.prune(0.5)     # masks chosen layer by layer: '0' is masked, and compact says what to do
    with pytest.raises(ValueError, match=r"layer '3' \(Scale\).*exclude=\['0'\].*ignored_layers=\['3'\]"): compact(m, x)
    with torch.no_grad(): ref = m(x)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        small = compact(m, x, ignored_layers=['3'])     # the advice works: those channels are kept
    with torch.no_grad(): assert (small(x) - ref).abs().max() <= 1e-4
    m = _net(Shuffle())
    Sparsifier(m, Filter(), example_inputs=x).prune(0.5)
    with pytest.raises(RuntimeError, match=r"'3' \(Shuffle\).*exclude=\['0'\]"): compact(m, x)
    m = _net(Shuffle())
    sp = Sparsifier(m, Filter(), exclude=['0'], example_inputs=x); sp.prune(0.5); sp.apply_masks()
    with torch.no_grad(): ref = m(x)
    small = compact(m, x)
    assert small[4].out_channels == 4
    with torch.no_grad(): assert (small(x) - ref).abs().max() <= 1e-4

class Res(nn.Module):
    "A small residual net with a concatenation and a depthwise conv"
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 6, 1), nn.BatchNorm2d(6), nn.ReLU())
        self.c = nn.Conv2d(14, 10, 1)
        self.head = nn.Linear(10, 3)
    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.a(x))
        y = torch.cat([self.dw(x), self.b(x)], 1)
        return self.head(self.c(y).mean((2, 3)))

@settings(max_examples=12, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_random_coupled_masks_compact_exactly(data):
    "Property: for any choice of pruned channels per coupled unit, the compacted model equals the masked one"
    torch.manual_seed(data.draw(st.integers(0, 1000)))
    m = lively(Res())
    x = torch.randn(2, 3, 8, 8)
    sp = Sparsifier(m, Filter(), example_inputs=x)
    for u in sp.units:
        u.set_pruned(torch.tensor(data.draw(st.lists(st.booleans(), min_size=u.n, max_size=u.n))))
    sp.apply_masks()
    with torch.no_grad(): ref = m(x)
    small, stats = compact(m, x, return_stats=True)
    assert stats['kept_uncoupled'] == 0
    with torch.no_grad(): assert (small(x) - ref).abs().max() <= 1e-4
    assert n_params(small) <= n_params(m)

@pytest.mark.slow
def test_compact_learner():
    import fastai.callback.schedule  # Learner.fit_one_cycle
    from fastprune.data import digits_learner
    from fastprune.callback import PruneCallback
    learn = digits_learner()
    xb = learn.dls.valid.one_batch()[0][:1]
    learn.fit_one_cycle(1, 1e-2, cbs=PruneCallback(0.5, Filter(), context='global', example_inputs=xb, report=False))
    before = learn.validate()
    dense = n_params(learn.model)
    compact_learner(learn)
    after = learn.validate()
    assert abs(after[0] - before[0]) < 1e-4 and abs(after[1] - before[1]) < 1e-6
    assert n_params(learn.model) < 0.7 * dense
    opt_ids = {id(p) for pl in learn.opt.param_lists for p in pl}
    assert opt_ids == {id(p) for p in learn.model.parameters()}
    learn = digits_learner()
    learn.fit_one_cycle(1, 1e-2, cbs=PruneCallback(0.5, Filter(), context='global', example_inputs=xb, compact=True, report=False))
    assert not [n for n, _ in learn.model.named_buffers() if n.endswith('prune_mask')]
    assert n_params(learn.model) < 0.7 * dense


def test_apply_masks_rezeroes_norms_only_coupled_units_know():
    "A BatchNorm after a ReLU is invisible to `following_bn`; after an optimizer-like update `apply_masks` must zero it again"
    from fastprune.sparsifier import Sparsifier
    from fastprune.granularity import Filter
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.BatchNorm2d(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4)).eval()
    x = torch.randn(2, 3, 8, 8)
    sp = Sparsifier(model, Filter(), context='local', example_inputs=x)
    sp.prune(0.5)
    with torch.no_grad(): model[2].weight.add_(1.); model[2].bias.add_(1.)  # what a training step does
    sp.apply_masks()
    assert (model[2].bias == 0).sum() == 4
    small = compact(model, x)
    torch.testing.assert_close(small(x), model(x), atol=1e-5, rtol=0)


def test_report_of_a_compacted_model_needs_no_dense():
    "compact records the dense totals: sparsity_report(compacted) gives the real compression and speed-up without dense="
    from fastprune.metrics import sparsity_report, count_params, count_flops
    m, x = torchvision.models.resnet18().eval(), torch.randn(2, 3, 64, 64)
    Sparsifier(m, Filter(), example_inputs=x).prune(0.5)
    small = compact(m, x)
    r = sparsity_report(small, x)
    assert r['compression_ratio'] == pytest.approx(count_params(m).total / count_params(small).nonzero)
    assert r['theoretical_speedup'] == pytest.approx(count_flops(m, x).total / count_flops(small, x).nonzero)
    assert r['compression_ratio'] > 3 and 'before `compact`' in str(r)
    assert sparsity_report(small, x[:1])['theoretical_speedup'] == pytest.approx(r['theoretical_speedup'])  # FLOPs scale with the batch
    again = compact(small, x)                      # compacting again keeps the original reference
    assert again.fastprune_dense == small.fastprune_dense
    assert sparsity_report(small, x, dense=small)['compression_ratio'] < 1.01   # an explicit dense= wins


def test_coupled_unit_reuses_its_zeroing_plan_until_a_mask_changes(monkeypatch):
    "Every step zeroes the norms of pruned channels again (they drift), but finds which ones only when a mask changed"
    from fastprune.units import CoupledUnit
    m, x = torchvision.models.resnet18().eval(), torch.randn(1, 3, 64, 64)
    sp = Sparsifier(m, Filter(), example_inputs=x).prune(0.5)
    calls = []
    orig = CoupledUnit.pruned
    monkeypatch.setattr(CoupledUnit, 'pruned', lambda self: calls.append(self) or orig(self))
    dead = (~m.conv1.prune_mask.flatten(1).any(1)).nonzero().flatten()
    assert len(dead) == 32
    for _ in range(3):
        with torch.no_grad(): m.bn1.bias.add_(1.); m.bn1.weight.add_(1.)   # an optimizer step revives them
        sp.apply_masks()
        assert (m.bn1.bias[dead] == 0).all() and (m.bn1.weight[dead] == 0).all() and (m.bn1.bias != 0).sum() == 32
    assert calls == []                               # masks unchanged: the cached plan was used
    sp.prune(0.7)
    assert calls and len((~m.conv1.prune_mask.flatten(1).any(1)).nonzero()) == 45
    with torch.no_grad(): m.bn1.bias.add_(1.)
    sp.apply_masks()
    assert (m.bn1.bias == 0).sum() == 45             # the new plan zeroes the newly pruned channels too
