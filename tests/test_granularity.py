"Property tests of fastprune.granularity: round trips, brute-force references, N:M blocks, errors"
import math, pytest, torch
from torch import nn
from hypothesis import given, settings, strategies as st
from fastprune.granularity import *

SET = settings(max_examples=25)

def make_layer(kind, g, ipg, opg, k):
    "A layer of `kind` with `g` groups, `ipg` input and `opg` output channels per group, kernel size `k`"
    i, o = g*ipg, g*opg
    if kind == 'linear': return nn.Linear(ipg, opg)
    if kind == 'conv1d': return nn.Conv1d(i, o, k, groups=g)
    if kind == 'conv2d': return nn.Conv2d(i, o, (k, k+1), groups=g)
    if kind == 'conv3d': return nn.Conv3d(i, o, (k, 1, 2), groups=g)
    if kind == 'convt1d': return nn.ConvTranspose1d(i, o, k, groups=g)
    if kind == 'convt2d': return nn.ConvTranspose2d(i, o, (k, k+1), groups=g)
    if kind == 'convt3d': return nn.ConvTranspose3d(i, o, (k, 1, 2), groups=g)
    if kind == 'depthwise': return nn.Conv2d(i, i*opg, k, groups=i)
    raise ValueError(kind)

KINDS = ['linear', 'conv1d', 'conv2d', 'conv3d', 'convt1d', 'convt2d', 'convt3d', 'depthwise']
layers = st.builds(make_layer, st.sampled_from(KINDS), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4),
                   st.integers(1, 3))
GRANS = [Weight(), Kernel(), Filter(), Channel()]

def channel_index(m):
    "Weight-shaped (out channel, in channel, kernel position) index of every weight, computed independently"
    w = m.weight
    pos = torch.arange(w.numel()).reshape(w.shape)
    if isinstance(m, nn.Linear):
        return pos // w.shape[1], pos % w.shape[1], torch.zeros_like(pos)
    K = math.prod(w.shape[2:])
    a, b, kp = pos // (w.shape[1]*K), (pos // K) % w.shape[1], pos % K
    G = m.groups
    if m.transposed:   # (in, out/G, *k)
        ipg = w.shape[0] // G
        return (a // ipg)*w.shape[1] + b, a, kp
    opg = w.shape[0] // G
    return a, (a // opg)*w.shape[1] + b, kp

def group_index(g, m):
    "Weight-shaped group id of every weight for the standard granularities (reference)"
    out, inn, kp = channel_index(m)
    G, O, I, K = layer_dims(m)
    if isinstance(g, Filter): return out
    if isinstance(g, Channel): return inn
    if isinstance(g, Kernel): return out*(I//G) + inn % (I//G)
    return torch.arange(m.weight.numel()).reshape(m.weight.shape)

def test_layer_dims():
    assert layer_dims(nn.Conv2d(4, 6, 3, groups=2)) == (2, 6, 4, 9)
    assert layer_dims(nn.ConvTranspose2d(4, 6, 3, groups=2)) == (2, 6, 4, 9)
    assert layer_dims(nn.Linear(5, 3)) == (1, 3, 5, 1)
    assert layer_dims(nn.Conv3d(2, 3, (1, 2, 3))) == (1, 3, 2, 6)

@SET
@given(layers, st.sampled_from(GRANS), st.integers(0, 2**31-1))
def test_round_trip_and_reference(m, g, seed):
    g.check(m, 'layer')
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(m.weight.shape, generator=gen)
    n, size = g.n_groups(m), g.group_size(m)
    assert n*size == m.weight.numel()
    grp = g.groups(t, m)
    assert grp.shape == (n, size)
    assert torch.equal(g.ungroup(grp, m), t)
    # every group holds exactly the weights of the reference group
    gid = group_index(g, m)
    assert torch.equal(g.ungroup(torch.arange(n)[:, None].expand(n, size), m), gid)
    ref = torch.zeros(n).index_add_(0, gid.flatten(), t.flatten())
    torch.testing.assert_close(g.reduce(t, m), ref)
    keep = torch.rand(n, generator=gen) > .5
    mask = g.expand(keep, m)
    assert mask.dtype == torch.bool and mask.shape == m.weight.shape
    assert torch.equal(mask, keep[gid])
    assert torch.equal(g.pruned_groups(mask, m), ~keep)
    torch.testing.assert_close(g.reduce(mask.float(), m), keep.float()*size)

@SET
@given(layers, st.integers(0, 2**31-1))
def test_kernel_and_weight(m, seed):
    t = torch.randn(m.weight.shape, generator=torch.Generator().manual_seed(seed))
    if isinstance(m, nn.Linear): assert torch.equal(Kernel().reduce(t, m), Weight().reduce(t, m))
    assert torch.equal(Weight().reduce(t, m), t.flatten())
    assert Weight().group_size(m) == 1

def test_structured_flags():
    assert Filter().structured and Channel().structured
    assert not (Weight().structured or Kernel().structured or NM().structured)
    assert [g.group_sparsity for g in GRANS] == [1.0]*4 and NM(1, 4).group_sparsity == .75
    assert [g.name for g in GRANS + [NM(2, 4)]] == ['weight', 'kernel', 'filter', 'channel', '2:4']

def test_conv_transpose_filter_is_output_channel():
    m = nn.ConvTranspose2d(3, 5, 2)
    w = m.weight.detach()
    assert Filter().n_groups(m) == 5 and Channel().n_groups(m) == 3
    torch.testing.assert_close(Filter().reduce(w.abs(), m), w.abs().sum((0, 2, 3)))
    torch.testing.assert_close(Channel().reduce(w.abs(), m), w.abs().sum((1, 2, 3)))

def test_depthwise_filter_and_channel():
    m = nn.Conv2d(4, 4, 3, groups=4)
    assert Filter().n_groups(m) == Channel().n_groups(m) == 4
    keep = torch.tensor([True, False, True, False])
    assert torch.equal(Filter().expand(keep, m), Channel().expand(keep, m))

# ---------------------------------------------------------------- N:M
def nm_rows(m):
    "Reference: the weight as (out, in/groups*kernel) rows in (input channel, kernel position) order"
    out, inn, kp = channel_index(m)
    G, O, I, K = layer_dims(m)
    key = (out*(I//G) + inn % (I//G))*K + kp
    return key.flatten().argsort()

nm_layers = st.builds(make_layer, st.sampled_from(KINDS), st.integers(1, 2), st.sampled_from([2, 4]), st.integers(1, 3),
                      st.sampled_from([2]))
nms = st.sampled_from([NM(2, 4), NM(1, 4), NM(0, 4), NM(1, 2), NM(3, 8), NM(5, 12)])

@SET
@given(nm_layers, nms, st.integers(0, 2**31-1), st.booleans())
def test_nm(m, g, seed, ties):
    G, O, I, K = layer_dims(m)
    if (I//G*K) % g.m:
        with pytest.raises(ValueError, match=f"multiple of m={g.m}"): g.check(m, 'the_layer')
        return
    gen = torch.Generator().manual_seed(seed)
    s = torch.randint(0, 3, m.weight.shape, generator=gen).float() if ties else torch.randn(m.weight.shape, generator=gen)
    order = nm_rows(m)
    blocks = s.flatten()[order].reshape(-1, g.m)
    n = g.n_groups(m)
    assert blocks.shape[0] == n and g.group_size(m) == g.m
    assert torch.equal(g.groups(s, m), blocks)
    assert torch.equal(g.ungroup(g.groups(s, m), m), s)
    torch.testing.assert_close(g.reduce(s, m), blocks.sort(1).values[:, :g.m-g.n].sum(1))
    keep = torch.rand(n, generator=gen) > .5
    mask = g.expand(keep, m, s)
    mb = mask.flatten()[order].reshape(-1, g.m)
    assert torch.equal(mb.sum(1), torch.where(keep, g.m, g.n))
    # the survivors of a pruned block are its n best, ties going to the first position
    for b in (~keep).nonzero().flatten()[:5].tolist():
        ref = sorted(range(g.m), key=lambda j: (-blocks[b, j].item(), j))[:g.n]
        assert sorted(mb[b].nonzero().flatten().tolist()) == sorted(ref)
    assert torch.equal(g.pruned_groups(mask, m), ~keep)

def test_nm_neg_inf():
    m = nn.Linear(8, 1)
    s = torch.tensor([[-float('inf'), 1., 2., -float('inf'), 5., 6., 7., 8.]])
    g = NM(2, 4)
    r = g.reduce(s, m)
    assert not r.isnan().any()
    assert r[0] == -float('inf') and r[1] == 11.
    mask = g.expand(torch.tensor([False, False]), m, s)
    assert mask.tolist() == [[False, True, True, False, False, False, True, True]]
    # fully pruned weights are never revived while better candidates exist
    s2 = torch.full((1, 8), -float('inf')); s2[0, 0] = 1.
    assert g.expand(torch.tensor([False, False]), m, s2)[0, :4].tolist() == [True, True, False, False]

def test_nm_default_scores_use_weight_magnitude():
    m = nn.Linear(4, 1)
    with torch.no_grad(): m.weight.copy_(torch.tensor([[.1, -3., 2., .5]]))
    assert NM(2, 4).expand(torch.tensor([False]), m).tolist() == [[False, True, True, False]]

def test_nm_conv_layout():
    "N:M blocks run along (in_channels x kernel positions) of each filter, row-major"
    m = nn.Conv2d(2, 3, 2)  # rows of 8 = 2 blocks of 4 per filter
    s = torch.arange(24.).reshape(3, 2, 2, 2)
    assert torch.equal(NM(2, 4).groups(s, m), torch.arange(24.).reshape(6, 4))

def test_reduce_neg_inf_no_nan():
    m = nn.Conv2d(2, 3, 2)
    s = torch.rand(m.weight.shape); s[0] = -float('inf'); s[1, 0, 0, 0] = -float('inf')
    for g in GRANS + [NM(2, 4)]:
        r = g.reduce(s, m)
        assert not r.isnan().any(), g
    assert Filter().reduce(s, m)[:2].isneginf().all()
    mask = Filter().expand(torch.tensor([False, True, True]), m, s)
    assert not mask[0].any() and mask[1:].all()

# ---------------------------------------------------------------- errors
@pytest.mark.parametrize('g', GRANS + [NM(2, 4)])
def test_unsupported_layer(g):
    with pytest.raises(ValueError) as e: g.check(nn.BatchNorm2d(4), 'features.bn')
    assert 'features.bn' in str(e.value) and repr(g) in str(e.value)

def test_other_errors():
    m = nn.Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match="n=4, m=4"): NM(4, 4)
    with pytest.raises(ValueError): NM(-1, 4)
    with pytest.raises(ValueError, match="NM\\(n=2, m=4\\).*'conv1'.*27"): NM(2, 4).check(m, 'conv1')
    with pytest.raises(ValueError, match="shaped like the weight"): Filter().reduce(torch.ones(4), m)
    with pytest.raises(ValueError, match=r"shape \(4,\)"): Filter().expand(torch.ones(3, dtype=torch.bool), m)
    with pytest.raises(ValueError, match="'rows'"): as_granularity('rows')
    with pytest.raises(ValueError, match="BatchNorm2d"): Filter().reduce(torch.ones(3), nn.BatchNorm2d(3))

def test_as_granularity_and_equality():
    assert as_granularity('Filter') == Filter() and as_granularity(Channel) == Channel()
    assert as_granularity('1:4') == NM(1, 4) != NM(2, 4)
    g = NM(2, 4); assert as_granularity(g) is g
    assert len({Filter(), Filter(), NM(2, 4), NM(2, 4), NM(1, 4)}) == 3
    assert repr(NM(2, 4)) == 'NM(n=2, m=4)' and repr(Filter()) == 'Filter()'

class _CountTorchCalls(torch.overrides.TorchFunctionMode):
    "counts the torch functions and tensor methods called inside the `with` block"
    def __init__(self): super().__init__(); self.n = 0
    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))

def _torch_calls(g, m):
    s = m.weight.detach().abs()
    with _CountTorchCalls() as c:
        r = g.reduce(s, m)
        g.expand(r > r.mean(), m, s)
    return c.n

@pytest.mark.parametrize('g', GRANS + [NM(2, 4)], ids=repr)
@pytest.mark.parametrize('small,big', [(nn.Conv2d(8, 8, 3), nn.Conv2d(64, 128, 3)), (nn.Linear(8, 4), nn.Linear(512, 256)),
                                       (nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(128, 128, 3, groups=128))])
def test_vectorised(g, small, big):
    "reduce + expand call as many torch ops on a small layer as on a large one: no Python loop over groups, weights or channels"
    if isinstance(g, NM) and (small.weight[0].numel() % 4 or big.weight[0].numel() % 4): pytest.skip('input size not a multiple of 4')
    assert _torch_calls(g, small) == _torch_calls(g, big)

def test_masks_follow_the_weight_device():
    "A keep vector on the CPU gives a mask on the weight's device (meta here, standing in for cuda)"
    with torch.device('meta'): m = nn.Conv2d(4, 8, 3)
    for g in GRANS + [NM(2, 4)]:
        keep = torch.ones(g.n_groups(m), dtype=torch.bool)
        assert g.expand(keep, m).device.type == 'meta', g

def test_show_groups_draws_every_layer_kind():
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    for m in [nn.ConvTranspose2d(4, 6, 3, groups=2), nn.Linear(8, 3), nn.Conv1d(4, 4, 3), nn.Conv2d(4, 4, 2, groups=4)]:
        for g in GRANS:
            ax = show_groups(g, m)
            assert ax.get_title() == g.name and len(ax.images) == 1
            show_groups(g, m, keep=torch.rand(g.n_groups(m)) > .5)
            plt.close('all')
    with pytest.raises(ValueError, match="1-d and 2-d"): show_groups(Filter(), nn.Conv3d(2, 2, 2))
