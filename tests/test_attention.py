"Tests for attention models (ViT, Swin v1/v2, MaxViT): MLP features with Filter(), whole heads with Head(), exact compaction"
import warnings
import pytest, torch, torch.nn as nn, torchvision
from fastprune.compact import compact
from fastprune.sparsifier import Sparsifier
from fastprune.granularity import Filter
from fastprune.criteria import Magnitude, Random
from fastprune.attention import *

def n_params(m): return sum(p.numel() for p in m.parameters())

# one torch thread in this module (small inputs on shared cores): `one_thread` in conftest.py
pytestmark = pytest.mark.usefixtures('one_thread')

def tiny_vit(): return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4,
                                                             hidden_dim=64, mlp_dim=128, num_classes=10)
MODELS = {  # name: (constructor, input size): Swin takes small inputs, MaxViT's partitions fix it to 224, ViT-B/16 too
    'vit_tiny': (tiny_vit, 32), 'vit_b_16': (torchvision.models.vit_b_16, 224), 'swin_t': (torchvision.models.swin_t, 64),
    'swin_v2_t': (torchvision.models.swin_v2_t, 64), 'maxvit_t': (torchvision.models.maxvit_t, 224)}

def make(name, seed=0):
    "The model in eval mode with a random (not zero) classifier, and an input"
    torch.manual_seed(seed)
    f, s = MODELS[name]
    m = f().eval()
    nn.init.normal_([l for l in m.modules() if isinstance(l, nn.Linear)][-1].weight, std=0.02)  # ViT's head is zero-initialised
    return m, torch.randn(1, 3, s, s)

def check_same(a, b, tol=1e-4):
    "Outputs equal within `tol` relative to their scale, and not trivially (a constant output proves nothing)"
    assert float(a.std()) > 1e-6, "the compared output is constant"
    err = float((a - b).abs().max() / a.abs().max())
    assert err <= tol, f"compacted outputs differ by {err:.2e} (relative)"

CASES = [(n, ctx, crit) for n in MODELS for ctx in ('local', 'global') for crit in (Magnitude, Random)]

@pytest.mark.parametrize('name,context,crit', CASES)
def test_mlp_filter(name, context, crit):
    "The documented path: 30% Filter() with example inputs prunes the MLP hidden features; the compacted model matches"
    m, x = make(name)
    sp = Sparsifier(m, Filter(), crit(), context=context, example_inputs=x)
    sp.prune(0.3); sp.apply_masks()
    with torch.no_grad(): ref = m(x)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')   # residual-stream filters masked by layer units are kept (and warned about)
        small = compact(m, x)
    with torch.no_grad(): check_same(ref, small(x))
    assert n_params(small) <= 0.9 * n_params(m)
    fc1 = lambda model: {n: l.out_features for n, l in model.named_modules()
                         if isinstance(l, nn.Linear) and n.endswith(('mlp.0', 'mlp_layer.1')) and 'cpb' not in n}
    f0, f1 = fc1(m), fc1(small)
    assert f0 and f0.keys() == f1.keys() and all(f1[n] < f0[n] for n in f0)   # every MLP lost hidden features

def _heads(model):
    return [(n, m.num_heads if hasattr(m, 'num_heads') else m.n_heads) for n, m in model.named_modules() if attention_spec(m) is not None]

HEAD_CASES = [('vit_tiny', 'local', Magnitude), ('vit_tiny', 'global', Random), ('vit_b_16', 'local', Magnitude),
              ('swin_t', 'local', Random), ('swin_t', 'global', Magnitude), ('swin_v2_t', 'local', Magnitude),
              ('swin_v2_t', 'global', Random), ('maxvit_t', 'local', Magnitude), ('vit_b_16', 'global', Random),
              ('maxvit_t', 'global', Random)]

@pytest.mark.parametrize('name,context,crit', HEAD_CASES)
def test_heads(name, context, crit):
    "Head(): whole heads masked, removed by compact with num_heads updated, outputs unchanged"
    m, x = make(name)
    before = dict(_heads(m))
    sp = Sparsifier(m, Head(), crit(), context=context, example_inputs=x)
    assert all(isinstance(u, HeadUnit) for u in sp.units) and len(sp.units) == len(before)
    sp.prune(0.3); sp.apply_masks()
    masked = {u.name: int(u.pruned().sum()) for u in sp.units}
    assert sum(masked.values()) >= 0.2 * sum(before.values())
    if context == 'local': assert all(masked[n] == int(0.3 * h) or masked[n] == round(0.3 * h) for n, h in before.items())
    with torch.no_grad(): ref = m(x)
    small, stats = compact(m, x, return_stats=True)
    after = dict(_heads(small))
    assert stats['heads'] == sum(masked.values())
    assert {n: before[n] - masked[n] for n in before} == after
    with torch.no_grad(): check_same(ref, small(x))
    assert n_params(small) < n_params(m)

def test_head_layout():
    "Removed heads take their q/k/v rows, output-projection columns and per-head tables with them"
    m, x = make('swin_v2_t')
    sp = Sparsifier(m, Head(), example_inputs=x)
    u = sp.units[0]
    sp_mask = torch.tensor([True, False, False]); u.set_pruned(sp_mask)
    test = compact(m, x).features[1][0].attn
    assert (test.num_heads, test.head_dim) == (2, 32)
    assert test.qkv.weight.shape == (192, 96) and test.proj.weight.shape == (96, 64)
    assert test.logit_scale.shape == (2, 1, 1) and test.cpb_mlp[2].weight.shape == (2, 512)
    with pytest.raises(ValueError, match='no attention block'): Sparsifier(torchvision.models.resnet18(), Head(), example_inputs=x)

def test_mha_forward():
    "PrunedMultiheadAttention computes what nn.MultiheadAttention does (before any head is removed), masks included"
    torch.manual_seed(0)
    for bf in (True, False):
        a = nn.MultiheadAttention(16, 4, batch_first=bf).eval()
        b = nn.MultiheadAttention(16, 4, batch_first=bf).eval(); b.load_state_dict(a.state_dict()); b.head_dim = 4
        b.__class__ = PrunedMultiheadAttention
        x = torch.randn(2, 5, 16) if bf else torch.randn(5, 2, 16)
        kpm = torch.tensor([[False] * 4 + [True], [False] * 5])
        for kw in ({}, dict(key_padding_mask=kpm), dict(attn_mask=torch.ones(5, 5, dtype=torch.bool).triu(1))):
            (o1, w1), (o2, w2) = a(x, x, x, **kw), b(x, x, x, **kw)
            torch.testing.assert_close(o1, o2, atol=1e-5, rtol=1e-4); torch.testing.assert_close(w1, w2, atol=1e-5, rtol=1e-4)


def test_head_by_name():
    "'head' is a granularity name once fastprune.attention is imported (fastprune.all does)"
    from fastprune.granularity import as_granularity
    assert as_granularity('head') == Head() and as_granularity('Head').unit == 'heads'
