"Zoo sweep: one torchvision CNN of every family, pruned 30% with Filter() on the documented path, then compacted"
import time, warnings, pytest, torch, torch.nn as nn, torchvision
from fastprune.granularity import Filter
from fastprune.criteria import Magnitude, Random
from fastprune.sparsifier import Sparsifier
from fastprune.compact import compact

# model -> a small square input it takes (64: 2x2 after the last stride, so BatchNorm statistics of a few random batches
# stay sound; inception_v3 needs 75)
CNNS = dict(alexnet=64, convnext_tiny=64, densenet121=64, efficientnet_b0=64, efficientnet_v2_s=64, googlenet=64,
            inception_v3=75, mnasnet0_5=64, mobilenet_v2=64, mobilenet_v3_small=64, regnet_x_400mf=64, regnet_y_400mf=64,
            resnet18=64, resnext50_32x4d=64, shufflenet_v2_x0_5=64, squeezenet1_0=64, vgg11_bn=64, wide_resnet50_2=64)

# one torch thread in this module (small inputs on shared cores): `one_thread` in conftest.py
pytestmark = pytest.mark.usefixtures('one_thread')

def _params(m): return sum(p.numel() for p in m.parameters())

def _model(name, size):
    "A random-init model whose BatchNorms saw a few random batches, so activations neither vanish nor reach 1e9"
    torch.manual_seed(0)
    m = getattr(torchvision.models, name)(weights=None, **(dict(aux_logits=False, init_weights=False) if name in ('googlenet', 'inception_v3') else {}))
    for mod in m.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm): mod.momentum = None   # cumulative average
    m.train()
    with torch.no_grad(): m(torch.randn(4, 3, size, size))
    return m.eval()

def _check(name, context, criterion):
    size = CNNS[name]
    m = _model(name, size)
    x = torch.randn(1, 3, size, size)
    p0 = _params(m)
    sp = Sparsifier(m, granularity=Filter(), criterion=criterion, context=context, example_inputs=x)
    sp.prune(0.3); sp.apply_masks()
    with torch.no_grad(): ref = m(x)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        small = compact(m, x)
    with torch.no_grad(): out = small(x)
    scale = max(1., float(ref.abs().max()))
    assert float(ref.std()) > 1e-3 * scale, f"{name}: the masked model's output is constant: comparing it proves nothing"
    err = float((ref - out).abs().max()) / scale
    assert err <= 1e-4, f"{name} {context}: compacted outputs differ by {err:.3g} relative"
    ratio = _params(small) / p0
    assert ratio <= 0.9, f"{name} {context}: params only down to {ratio:.3f}"
    return ratio

def _criterion(name, context, other=False):
    "Magnitude in one context and Random in the other, alternating over the models (`other`: the opposite pairing)"
    mag = (list(CNNS).index(name) + (context == 'global') + other) % 2 == 0
    return Magnitude() if mag else Random(seed=0)

@pytest.mark.parametrize('context', ['local', 'global'])
@pytest.mark.parametrize('name', list(CNNS))
def test_zoo(name, context):
    "every family, both contexts; each context meets Magnitude on half the models and Random on the other half"
    _check(name, context, _criterion(name, context))

@pytest.mark.parametrize('context', ['local', 'global'])
@pytest.mark.parametrize('name', list(CNNS))
def test_zoo_other_criterion(name, context):
    "the pairings `test_zoo` leaves out: with both, every model meets both criteria in both contexts"
    _check(name, context, _criterion(name, context, other=True))

def _tiny_next():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, padding=1, groups=4), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 16, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()

@pytest.mark.parametrize('context', ['local', 'global'])
def test_grouped_conv_prunes_whole_classes(context):
    "units around a groups=4 conv prune the same positions in every conv group; the compacted conv keeps groups=4"
    m, x = _tiny_next(), torch.randn(2, 3, 16, 16)
    sp = Sparsifier(m, Filter(), context=context, example_inputs=x)
    assert [u.class_size for u in sp.units] == [1, 4, 4, 1]
    assert [sp.units[1].feasible(k) for k in (3, 4, 9, 31)] == [0, 4, 8, 28]
    sp.prune(0.3); sp.apply_masks()
    for u in sp.units[1:3]:
        p = u.pruned()
        assert int(p.sum()) % 4 == 0 and int(p.sum()) > 0
        assert bool((p.view(4, 8) == p.view(4, 8)[0]).all())         # the same positions in each of the 4 groups
    small, st = compact(m, x, return_stats=True)
    g = small[6]
    assert g.groups == 4 and g.in_channels % 4 == 0 and g.out_channels % 4 == 0 and g.in_channels < 32
    with torch.no_grad(): assert float((small(x) - m(x)).abs().max()) <= 1e-5
    assert st['kept_grouped'] == 0

def test_grouped_conv_uneven_masks_are_kept():
    "masks chosen layer by layer (no example_inputs) are uneven over the conv groups: compact keeps those, outputs equal"
    m, x = _tiny_next(), torch.randn(2, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        sp = Sparsifier(m, Filter(), layers=['3'])
        sp.prune(0.3); sp.apply_masks()
        small, st = compact(m, x, return_stats=True)
    assert st['kept_grouped'] > 0 and small[6].groups == 4
    with torch.no_grad(): assert float((small(x) - m(x)).abs().max()) <= 1e-5

def test_compact_check_is_relative():
    "logits of 1e6 that differ by float rounding pass; the error of a changed output names the first layer that changed"
    class Center(nn.Module):      # averages over the channels: a removed 0 channel changes the others
        def forward(self, x): return x - x.mean(1, keepdim=True)
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), Center(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8 * 12 * 12, 4)).eval()
    x = torch.randn(1, 3, 16, 16)
    sp = Sparsifier(m, Filter(), example_inputs=x); sp.prune(0.5); sp.apply_masks()
    with pytest.raises(RuntimeError, match=r"relative.*first layer whose output changed is '2' \(Center\)"): compact(m, x)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8 * 12 * 12, 4)).eval()
    with torch.no_grad(): m[5].weight.mul_(1e6)
    sp = Sparsifier(m, Filter(), example_inputs=x); sp.prune(0.5); sp.apply_masks()
    with torch.no_grad(): ref = m(x)
    assert float(ref.abs().max()) > 1e4
    small = compact(m, x)
    with torch.no_grad(): assert float((small(x) - ref).abs().max()) / float(ref.abs().max()) <= 1e-5

def test_layernorm_over_channels_normalises_over_kept():
    "a LayerNorm over channels (ConvNeXt's LayerNorm2d) skips pruned channels, so compaction is exact; reset releases them"
    from torchvision.models.convnext import LayerNorm2d
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 1), LayerNorm2d(8), nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(2, 3, 5, 5)
    sp = Sparsifier(m, Filter(), layers=['0'], example_inputs=x); sp.prune(0.5); sp.apply_masks()
    assert int((~m[1].prune_keep).sum()) == 4
    with torch.no_grad(): ref = m(x)
    small = compact(m, x)
    assert small[1].normalized_shape == (4,) and 'prune_keep' not in small[1]._buffers
    with torch.no_grad(): assert float((small(x) - ref).abs().max()) <= 1e-5
    sp.reset(); sp.apply_masks()
    assert bool(m[1].prune_keep.all())
