"Tests for fastprune.sparsifier: exactness over the model zoo, monotone masks, save/load, the floor, errors"
import copy, importlib.util, io, math, os, sys
import pytest, torch, torchvision
from torch import nn
from hypothesis import given, settings, strategies as st
from fastprune.granularity import *
from fastprune.criteria import *
from fastprune.sparsifier import *
from fastprune.sparsifier import _select_radix
from fastprune.data import digits_cnn


def mlp(): return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))

def _not_nm4(n, m):  # N:M needs an input dimension that is a multiple of m; big layers are left out to keep the test fast
    return m.weight[0].numel() % 4 != 0 or m.weight.numel() > 300_000

GRANS = {'weight': (Weight(), None), 'kernel': (Kernel(), None), 'filter': (Filter(), None),
         'channel': (Channel(), None), 'nm': (NM(2, 4), _not_nm4)}

@pytest.fixture(scope='module')
def zoo():
    torch.manual_seed(0)
    return {'resnet18': torchvision.models.resnet18(weights=None), 'mobilenet_v2': torchvision.models.mobilenet_v2(weights=None),
            'mlp': mlp()}

def _groups(sp, s, n):
    return round(s / sp.granularity.group_sparsity * n)

def _pruned(sp): return [int(u.pruned().sum()) for u in sp.units]


@pytest.mark.parametrize('gran', list(GRANS))
@pytest.mark.parametrize('model', ['resnet18', 'mobilenet_v2', 'mlp'])
def test_exact_local_and_global(zoo, model, gran):
    m = zoo[model]
    g, excl = GRANS[gran]
    s = 0.4 if gran == 'nm' else 0.6  # NM(2, 4) removes at most half of the weights
    for context in ('local', 'global'):
        sp = Sparsifier(m, g, context=context, exclude=excl)
        sp.reset()  # the fixture's model is shared: start from empty masks
        sp.prune(s)
        if context == 'local':
            assert _pruned(sp) == [_groups(sp, s, u.n) for u in sp.units]
        else:
            assert sp.shortfall == 0
            assert sum(_pruned(sp)) == _groups(sp, s, sp.n_groups)
        # the masks agree with the pruned-group counts: weights pruned = groups pruned x weights removed per group
        removed = sum(int((~mm.prune_mask).sum()) for mm in sp.layers.values())
        expect = sum(c * u.group_size * g.group_sparsity for c, u in zip(_pruned(sp), sp.units))
        assert removed == round(expect)
        assert sp.sparsity() == pytest.approx(removed / sum(mm.weight.numel() for mm in sp.layers.values()))
        sp.reset()


def test_local_exact_per_layer_weight_fraction(zoo):
    sp = Sparsifier(zoo['mlp']); sp.reset()
    sp.prune(0.35)
    for n, mm in sp.layers.items():
        assert int((~mm.prune_mask).sum()) == round(0.35 * mm.weight.numel())
    sp.reset()


def test_nm_target_counts_weights():
    sp = Sparsifier(mlp(), NM(2, 4))
    sp.prune(0.25)  # a quarter of the weights = half of the 4-blocks pruned to 2 of 4
    assert sp.sparsity() == pytest.approx(0.25, abs=1e-3)
    for u in sp.units: assert int(u.pruned().sum()) == round(0.5 * u.n)
    with pytest.raises(ValueError, match='0.5'): sp.prune(0.6)
    for mm in sp.layers.values():  # every block keeps at least 2 of 4
        assert int(NM(2, 4).groups(mm.prune_mask, mm).sum(1).min()) >= 2


@settings(max_examples=25)
@given(targets=st.lists(st.floats(0, 0.95), min_size=2, max_size=5),
       gran=st.sampled_from(['weight', 'kernel', 'filter']), context=st.sampled_from(['local', 'global']),
       crit=st.sampled_from(['mag', 'mean', 'random']))
def test_monotone_masks(targets, gran, context, crit):
    torch.manual_seed(1)
    m = digits_cnn()
    c = {'mag': Magnitude(), 'mean': Magnitude(normalize='mean'), 'random': Random(3)}[crit]
    sp = Sparsifier(m, GRANS[gran][0], c, context=context)
    prev = {n: mm.prune_mask.clone() for n, mm in sp.layers.items()}
    for s in sorted(targets):
        sp.prune(s)
        for n, mm in sp.layers.items():
            assert bool((mm.prune_mask <= prev[n]).all())  # nothing released
            prev[n] = mm.prune_mask.clone()
        if context == 'local': assert _pruned(sp) == [round(s * u.n) for u in sp.units]
        else: assert sum(_pruned(sp)) == round(s * sp.n_groups) - sp.shortfall
    if sp.target_groups(sorted(targets)[-1]) > 0 and sum(_pruned(sp)) > 0:
        with pytest.raises(ValueError, match='never shrink'): sp.prune({n: 0. for n in sp.layers})


@settings(max_examples=30)
@given(sizes=st.lists(st.integers(1, 200), min_size=1, max_size=5), data=st.data())
def test_global_select_matches_sorting(sizes, data):
    "global_select (sample bracket and radix fallback) = taking the k lowest in (score, unit, index) order under caps"
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 1000)))
    decimals = data.draw(st.sampled_from([0, 1, 4]))  # few decimals: many ties
    units = []
    for n in sizes:
        s = torch.randn(n, generator=g).round(decimals=decimals)
        s[torch.rand(n, generator=g) < data.draw(st.floats(0, 0.5))] = float('-inf')
        units.append(s)
    caps = [data.draw(st.integers(int((s == float('-inf')).sum()), len(s))) for s in units]
    if sum(caps) == 0: return
    k = data.draw(st.integers(1, sum(caps)))
    # reference: walk all scores in (value, unit, index) order
    vals = torch.cat(units); uid = torch.cat([torch.full((len(s),), i) for i, s in enumerate(units)])
    idx = torch.cat([torch.arange(len(s)) for s in units])
    ref = [torch.zeros(len(s), dtype=torch.bool) for s in units]; taken = [0] * len(units); got = 0
    for i in vals.argsort(stable=True).tolist():
        u = int(uid[i])
        if taken[u] < caps[u]: ref[u][idx[i]] = True; taken[u] += 1; got += 1
        if got == k: break
    get = lambda u: units[u]
    for sel in (global_select(get, sizes, caps, k), global_select(get, sizes, caps, k, sample=16),
                global_select(get, sizes, caps, k, max_candidates=3), _select_radix(get, caps, k)[0]):
        for a, b in zip(sel, ref): assert torch.equal(a, b)


def test_state_dict_round_trip():
    torch.manual_seed(0)
    m = digits_cnn().eval()
    sp = Sparsifier(m, Filter(), context='global')
    sp.prune(0.5).apply_masks()
    sd = copy.deepcopy(m.state_dict())
    buf = io.BytesIO(); torch.save(sd, buf); buf.seek(0)
    fresh = digits_cnn().eval()
    sp2 = Sparsifier(fresh, Filter(), context='global')
    fresh.load_state_dict(torch.load(buf))
    for n in sp.layers:
        assert torch.equal(sp2.layers[n].prune_mask, sp.layers[n].prune_mask)
        w = sp2.layers[n].weight
        assert bool((w[~sp2.layers[n].prune_mask] == 0).all())
    assert sp2.sparsity() == sp.sparsity()
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad(): assert torch.allclose(fresh(x), m(x))
    sp2.prune(0.6)  # the loaded masks are the starting point: they are extended, not replaced
    assert sum(_pruned(sp2)) == round(0.6 * sp2.n_groups)
    for n in sp.layers: assert bool((sp2.layers[n].prune_mask <= sp.layers[n].prune_mask).all())


def test_masks_follow_device_and_dtype():
    m = mlp()
    sp = Sparsifier(m).prune(0.5)
    m.double()
    sp.apply_masks()
    assert m[0].weight.dtype == torch.float64 and m[0].prune_mask.dtype == torch.bool
    assert bool((m[0].weight[~m[0].prune_mask] == 0).all())


def _fake_backward(m):
    x = torch.randn(16, 1, 8, 8); y = torch.randint(0, 10, (16,))
    nn.functional.cross_entropy(m(x), y).backward()

@pytest.mark.parametrize('crit', [Magnitude(), Magnitude(2), Gradient(), Taylor(), Movement(), BNScale(), GeometricMedian(), Random(0)],
                         ids=lambda c: repr(c))
def test_floor_holds_global_filter(crit):
    torch.manual_seed(0)
    m = digits_cnn(widths=(8, 64, 128))
    sp = Sparsifier(m, Filter(), crit, context='global', min_keep=0.05)
    if crit.needs_grad:
        _fake_backward(m); sp.update()
    sp.prune(0.9)
    for u in sp.units:
        keep = max(1, math.ceil(0.05 * u.n))
        assert u.n - int(u.pruned().sum()) >= keep, u.name
    assert sum(_pruned(sp)) == round(0.9 * sp.n_groups) - sp.shortfall
    sp.prune(0.99)  # beyond what the floor allows: stops at the floor, reports the shortfall
    assert [u.n - int(u.pruned().sum()) for u in sp.units] == [max(1, math.ceil(0.05 * u.n)) for u in sp.units]
    assert sp.shortfall == round(0.99 * sp.n_groups) - sum(_pruned(sp)) > 0
    assert 'short of the target (the floor min_keep=0.05)' in repr(sp.report())


def test_unnormalised_global_filter_collapses_without_floor():
    torch.manual_seed(0)
    m = digits_cnn()
    sp = Sparsifier(m, Filter(), Magnitude(normalize=None), context="global", min_keep=0).prune(0.5)
    assert sp.layer_sparsity()['0.0'] == 1.0
    sp2 = Sparsifier(digits_cnn(), Filter(), context='global').prune(0.5)
    assert all(v < 1 for v in sp2.layer_sparsity().values())


def test_apply_masks_filter_zeroes_bias_and_bn():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, bias=True), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    m(torch.randn(1, 3, 8, 8))
    sp = Sparsifier(m, Filter(), layers=['0', '3'])
    sp.prune(0.5).apply_masks()
    dead = ~m[0].prune_mask.flatten(1).any(1)
    assert int(dead.sum()) == 4
    assert bool((m[0].bias[dead] == 0).all()) and bool((m[1].weight[dead] == 0).all()) and bool((m[1].bias[dead] == 0).all())
    assert bool((m[0].bias[~dead] != 0).all())
    with torch.no_grad():  # the pruned channels output exactly zero after BN + ReLU in eval mode too
        m.eval(); h = m[2](m[1](m[0](torch.randn(2, 3, 8, 8))))
    assert bool((h[:, dead] == 0).all())
    # Weight granularity leaves biases alone
    m2 = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    sp2 = Sparsifier(m2, Weight(), keep_classifier=True).prune(0.5)
    b = m2[0].bias.clone(); sp2.apply_masks()
    assert torch.equal(m2[0].bias, b)


def test_apply_masks_keeps_zeros_after_updates():
    m = mlp(); sp = Sparsifier(m).prune(0.8)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        m(torch.randn(4, 64)).sum().backward(); opt.step(); opt.zero_grad(); sp.apply_masks()
    for mm in sp.layers.values(): assert bool((mm.weight[~mm.prune_mask] == 0).all())


def test_remove_and_reset():
    m = mlp(); sp = Sparsifier(m).prune(0.5)
    sp.reset()
    assert sp.sparsity() == 0 and sum(_pruned(sp)) == 0
    sp.prune(0.5)
    plain = sp.remove()
    assert plain is m and not any('prune_mask' in k for k in m.state_dict())
    assert float((m[0].weight == 0).float().mean()) == pytest.approx(0.5, abs=1e-3)
    mlp().load_state_dict(m.state_dict())
    with pytest.raises(RuntimeError, match='removed'): sp.prune(0.6)


def test_noop_prune_does_not_score():
    calls = []
    def score(mod): calls.append(1); return mod.weight.detach().abs()
    sp = Sparsifier(mlp(), criterion=as_criterion(score), context='global')
    sp.prune(0.5); n = len(calls)
    assert n > 0
    sp.prune(0.5); sp.prune(0.5 + 0.1 / sp.n_groups)  # same number of groups
    assert len(calls) == n
    assert sp.target_groups(0.5) == round(0.5 * sp.n_groups)
    sp.prune(0.6); assert len(calls) > n


def test_layer_selection(zoo):
    sp = Sparsifier(zoo['resnet18']); sp.reset()
    assert len(sp.layers) == 20 and 'fc' not in sp.layers
    assert list(Sparsifier(mlp(), keep_classifier=True).layers) == ['0', '2', '4']
    assert list(Sparsifier(mlp(), layers=['4']).layers) == ['4']
    assert list(Sparsifier(mlp(), layer_types=[nn.Linear], exclude=lambda n, m: m.out_features == 64).layers) == ['0']
    m = mlp(); assert list(Sparsifier(m, exclude=m[0]).layers) == ['2']
    assert 'Linear' in repr(Sparsifier(mlp())) and '2 layers' in repr(Sparsifier(mlp()))
    r = Sparsifier(mlp()).prune(0.5).report()
    assert list(r.rows.layer) == ['0', '2', '4'] and list(r.rows.pruned) == [True, True, False]   # the classifier, left dense
    assert r['pruned_sparsity'] == pytest.approx(0.5, abs=1e-3) and r['pruned_weights'] == 64*128 + 128*64
    assert list(r.totals.layer) == ['total, pruned layers', 'total, all layers']
    assert '| layer |' in r._repr_markdown_() and 'sparsity' in repr(r)


def test_dict_targets():
    m = mlp(); sp = Sparsifier(m)
    sp.prune({'0': 0.3, m[2]: 0.7})
    ls = sp.layer_sparsity()
    assert ls['0'] == pytest.approx(0.3, abs=1e-3) and ls['2'] == pytest.approx(0.7, abs=1e-3)
    sp.prune({'0': 0.5})
    assert sp.layer_sparsity()['2'] == pytest.approx(0.7, abs=1e-3)
    with pytest.raises(ValueError, match='never shrink'): sp.prune({'2': 0.6})


def test_coupled_units_hook():
    m = digits_cnn(); x = torch.randn(2, 1, 8, 8)
    if importlib.util.find_spec('fastprune.compact') is None:
        with pytest.raises(NotImplementedError, match='compact'): Sparsifier(m, Filter(), example_inputs=x)
    else:
        sp = Sparsifier(m, Filter(), context='global', example_inputs=x)
        assert {n for u in sp.units for n in u.layers} == set(sp.layers)
        sp.prune(0.5)
        assert sum(_pruned(sp)) == round(0.5 * sp.n_groups) - sp.shortfall
    Sparsifier(digits_cnn(), Weight(), example_inputs=x)  # unstructured: example_inputs are not needed


@pytest.mark.parametrize('bad,err,msg', [(1.0, ValueError, r'\[0, 1\)'), (-0.1, ValueError, r'\[0, 1\)'), (float('nan'), ValueError, 'nan'),
                                         ('0.5', TypeError, 'str'), (True, TypeError, 'bool'), ([0.5], TypeError, 'list')])
def test_bad_sparsity(bad, err, msg):
    with pytest.raises(err, match=msg): Sparsifier(mlp()).prune(bad)


def test_errors():
    with pytest.raises(ValueError, match="'globl'"): Sparsifier(mlp(), context='globl')
    with pytest.raises(ValueError, match="'nope'"): Sparsifier(mlp()).prune({'nope': 0.5})
    with pytest.raises(ValueError, match='not part of the model'): Sparsifier(mlp()).prune({nn.Linear(2, 2): 0.5})
    with pytest.raises(ValueError, match='no prunable layer'): Sparsifier(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)))
    with pytest.raises(ValueError, match='no prunable layer'): Sparsifier(nn.Sequential(nn.Linear(3, 2)))  # only a classifier
    with pytest.raises(ValueError, match='Filter'): Sparsifier(digits_cnn(), Weight(), BNScale())
    with pytest.raises(ValueError, match="'features.0.0'"): Sparsifier(torchvision.models.mobilenet_v2(weights=None), NM(2, 4))
    with pytest.raises(ValueError, match="'layer9'"): Sparsifier(mlp(), exclude='layer9')
    with pytest.raises(ValueError, match="'bn'"): Sparsifier(mlp(), layers=['bn'])
    with pytest.raises(ValueError, match='min_keep'): Sparsifier(mlp(), min_keep=-1)
    with pytest.raises(ValueError, match='min_keep'): Sparsifier(mlp(), min_keep=1.5)
    sp = Sparsifier(mlp()).prune(0.5)
    with pytest.raises(ValueError, match='never shrink'): sp.prune(0.4)
    sg = Sparsifier(mlp(), context='global').prune(0.5)
    with pytest.raises(ValueError, match='never shrink'): sg.prune(0.4)
    with pytest.raises(RuntimeError, match='update'): Sparsifier(digits_cnn(), Filter(), Taylor()).prune(0.5)


def _ddp_worker(rank, world, store, q):
    import torch.distributed as dist
    # a FileStore rendezvous: no TCP port to race for, no store-server thread in rank 0 to tear down at exit
    dist.init_process_group('gloo', init_method=f'file://{store}', rank=rank, world_size=world)
    try:
        torch.manual_seed(0); m = mlp()
        sp = Sparsifier(m, criterion=Random(seed=rank), context='global')  # each rank would pick different weights
        sp.prune(0.5)
        # numpy copies travel by value: a torch tensor would travel as a shared-memory handle that dies with this process
        q.put((rank, {n: mm.prune_mask.numpy().copy() for n, mm in sp.layers.items()}))
        dist.barrier()                      # nobody tears the group down while the other rank still uses it
    finally: dist.destroy_process_group()

@pytest.mark.slow
def test_distributed_masks_identical(tmp_path):
    import torch.multiprocessing as mp
    ctx = mp.get_context('spawn'); q = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, str(tmp_path/'rendezvous'), q)) for r in range(2)]
    for p in procs: p.start()
    res = {r: {n: torch.from_numpy(v) for n, v in masks.items()} for r, masks in (q.get(timeout=240) for _ in procs)}
    for p in procs: p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert all(torch.equal(res[0][n], res[1][n]) for n in res[0])
    # without the broadcast they would differ: rank 1's own choice is not rank 0's
    torch.manual_seed(0); sp1 = Sparsifier(mlp(), criterion=Random(seed=1), context='global').prune(0.5)
    assert not all(torch.equal(res[0][n], mm.prune_mask) for n, mm in sp1.layers.items())


def test_pickle_round_trip():
    m = digits_cnn(); sp = Sparsifier(m, Filter(), context='global').prune(0.3)
    buf = io.BytesIO(); torch.save(sp, buf); buf.seek(0)
    sp2 = torch.load(buf, weights_only=False)
    assert sum(_pruned(sp2)) == sum(_pruned(sp)) and sp2.sparsity() == sp.sparsity()
    sp2.prune(0.5).apply_masks()
    assert sum(_pruned(sp2)) == round(0.5 * sp2.n_groups)


# --- Right by default (issue 11) ---

def _alive_fraction(sp):
    "{layer: fraction of its filters alive}"
    return {n: 1 - float(Filter().pruned_groups(m.prune_mask, m).float().mean()) for n, m in sp.layers.items()}

def test_prune_writes_the_zeros():
    "One-shot pruning leaves a pruned model: the weights are zero right after prune(), without apply_masks()"
    torch.manual_seed(0)
    m = torchvision.models.resnet18(weights=None)
    sp = Sparsifier(m, Weight(), Magnitude(), context='global').prune(0.9)
    zeros = sum(int((l.weight == 0).sum()) for l in sp.layers.values())
    assert zeros == round(0.9 * sp.n_groups)                     # 90.00% of the selected weights, counted in the weights
    assert abs(sp.sparsity() - 0.9) < 1e-7
    for n, l in sp.layers.items():
        assert int((l.weight == 0).sum()) == l.weight.numel() - int(l.prune_mask.sum())   # what the report counts
    f = torchvision.models.resnet18(weights=None)
    fsp = Sparsifier(f, Filter(), context='local', example_inputs=torch.randn(1, 3, 64, 64)).prune(0.5)
    dead = Filter().pruned_groups(f.conv1.prune_mask, f.conv1)
    assert int(dead.sum()) == 32 and bool((f.bn1.weight[dead] == 0).all()) and bool((f.bn1.bias[dead] == 0).all())

@pytest.mark.parametrize('name', ['resnet18', 'mobilenet_v2', 'densenet121'])
def test_global_filter_defaults_do_not_collapse(name):
    "50% global Filter() with defaults and example inputs: every layer keeps >= 10% of its filters (raw scores gave 3 of 256)"
    torch.manual_seed(0)
    m = getattr(torchvision.models, name)(weights=None).eval()
    sp = Sparsifier(m, Filter(), context='global', example_inputs=torch.randn(1, 3, 64, 64)).prune(0.5)
    assert min(_alive_fraction(sp).values()) >= 0.1
    assert sum(_pruned(sp)) + sp.shortfall == round(0.5 * sp.n_groups)

def test_raw_scores_still_collapse_when_asked():
    "The old behaviour stays available explicitly: raw L1 norms and a 1% floor thin resnet18 layers to a few filters"
    torch.manual_seed(0)
    m = torchvision.models.resnet18(weights=None).eval()
    sp = Sparsifier(m, Filter(), Magnitude(normalize=None), context='global', min_keep=0.01,
                    example_inputs=torch.randn(1, 3, 64, 64)).prune(0.5)
    assert min(_alive_fraction(sp).values()) < 0.05

def conv_stack(widths):
    layers, c = [], 1
    for w in widths: layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()]; c = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))

@settings(max_examples=40)
@given(widths=st.lists(st.integers(4, 128), min_size=2, max_size=6), s=st.floats(0, 0.5),
       gran=st.sampled_from([Filter(), Channel()]), crit=st.sampled_from(['magnitude', 'random', 'fpgm']),
       seed=st.integers(0, 2**16))
def test_global_structured_defaults_keep_every_layer(widths, s, gran, crit, seed):
    "Random conv stacks, defaults: global structured pruning <= 50% leaves every layer >= 10% of its groups, exact to one group"
    if crit == 'fpgm' and gran == Channel(): crit = 'magnitude'
    torch.manual_seed(seed)
    m = conv_stack(widths)
    sp = Sparsifier(m, gran, crit, context='global').prune(s)
    for u in sp.units: assert u.n - int(u.pruned().sum()) >= max(1, math.ceil(0.1 * u.n))
    target = round(s * sp.n_groups)
    assert abs(sum(_pruned(sp)) - target) <= 1 or sum(_pruned(sp)) + sp.shortfall == target

def test_structured_without_inputs_warns_on_shared_channels():
    "No example_inputs on a residual network: one warning saying how to couple; a plain conv stack gets none"
    with pytest.warns(UserWarning, match='example_inputs'): Sparsifier(torchvision.models.resnet18(weights=None), Filter())
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        Sparsifier(digits_cnn(), Filter())
        Sparsifier(torchvision.models.resnet18(weights=None), Weight())


# --- one vocabulary, no silent surprises (issue 12) ---

def test_nm_global_meets_the_pattern_in_every_block():
    "N:M is a hardware format: in global context too, every block of every pruned layer keeps at most n weights"
    torch.manual_seed(0)
    m = digits_cnn()
    sp = Sparsifier(m, NM(2, 4), context='global', exclude=['0.0']).prune(0.5)
    for l in sp.layers.values(): assert bool((NM(2, 4).groups(l.prune_mask, l).sum(1) <= 2).all())
    assert sp.shortfall == 0 and sp.pruned_fraction() == pytest.approx(0.5)
    with pytest.raises(ValueError, match='min_keep'): Sparsifier(digits_cnn(), NM(2, 4), context='global', min_keep=0.01, exclude=['0.0'])

@pytest.mark.parametrize('context', ['local', 'global'])
def test_round_to_keeps_multiples(context):
    "round_to=8: every unit keeps a multiple of 8 channels (or all), the nearest to its target; shortfall counts the difference"
    torch.manual_seed(0)
    m = torchvision.models.resnet18(weights=None).eval()
    sp = Sparsifier(m, Filter(), context=context, round_to=8, example_inputs=torch.randn(1, 3, 64, 64)).prune(0.3)
    for u in sp.units:
        kept = u.n - int(u.pruned().sum())
        assert kept % 8 == 0 or kept == u.n, (u.name, kept, u.n)
    asked = round(0.3 * sp.n_groups) if context == 'global' else sum(round(0.3 * u.n) for u in sp.units)
    assert sp.groups_pruned() + sp.shortfall == asked and abs(sp.shortfall) <= 4 * len(sp.units)
    if sp.shortfall: assert 'round_to=8' in repr(sp.report())
    if context == 'local':
        for u in sp.units: assert abs(round(0.3 * u.n) - int(u.pruned().sum())) <= 4   # the nearest multiple
    with pytest.raises(ValueError, match='round_to'): Sparsifier(mlp(), Weight(), round_to=8)
    with pytest.raises(ValueError, match='round_to'): Sparsifier(mlp(), Filter(), round_to=0)

def test_criteria_by_name():
    "Criteria take the same short names as granularities (and the CLI)"
    assert isinstance(Sparsifier(mlp(), 'filter', 'taylor').criterion, Taylor)
    assert repr(as_criterion('fpgm')) == 'GeometricMedian()' and isinstance(as_criterion('Magnitude'), Magnitude)
    with pytest.raises(ValueError, match="'l3'.*'magnitude'"): as_criterion('l3')

def _counted(m, layers):
    "Zero weights and weights of `layers` of `m`, counted directly on the weights"
    ws = [dict(m.named_modules())[n].weight for n in layers]
    return sum(int((w == 0).sum()) for w in ws), sum(w.numel() for w in ws)

@settings(max_examples=25)
@given(gran=st.sampled_from(['weight', 'kernel', 'filter', 'channel', '2:4']), context=st.sampled_from(['local', 'global']),
       round_to=st.sampled_from([None, 8]), s=st.floats(0, 0.9), seed=st.integers(0, 1000))
def test_reported_numbers_agree_with_the_weights(gran, context, round_to, s, seed):
    "Report, progress fraction and plot data agree with counts made directly on the weights"
    g = as_granularity(gran)
    if round_to and not g.structured: round_to = None
    s = min(s, g.group_sparsity)
    if s >= 1: s = 0.5
    torch.manual_seed(seed)
    m = digits_cnn()
    kw = dict(exclude=['0.0']) if gran == '2:4' else {}
    sp = Sparsifier(m, g, context=context, round_to=round_to, example_inputs=torch.randn(1, 1, 8, 8), **kw).prune(s)
    rep = sp.report()
    zeros, total = _counted(m, sp.layers)
    assert rep['pruned_sparsity'] == pytest.approx(zeros / total) == pytest.approx(sp.sparsity())
    allz, allw = _counted(m, [n for n, l in m.named_modules() if isinstance(l, (nn.Conv2d, nn.Linear))])
    assert rep['weight_sparsity'] == pytest.approx(allz / allw)
    df = rep.to_pandas().set_index('layer')
    for n, l in sp.layers.items():
        assert df.loc[n, 'nonzero'] == int((l.weight != 0).sum())
        if 'groups_pruned' in df: assert df.loc[n, 'groups_pruned'] == int(g.pruned_groups(l.prune_mask, l).sum())
    assert rep['pruned_fraction'] == pytest.approx(sp.pruned_fraction())
    if g.target_unit == 'weights': assert sp.pruned_fraction() == pytest.approx(zeros / total)
    else: assert sp.pruned_fraction() == pytest.approx(sum(int(u.pruned().sum()) for u in sp.units) / sp.n_groups)


# --- speed where users feel it (issue 16) ---

class CountingMagnitude(Magnitude):
    "Magnitude that counts how often each layer is scored"
    def __init__(self): super().__init__(); self.calls = {}
    def element_scores(self, module):
        self.calls[self._name(module)] = self.calls.get(self._name(module), 0) + 1
        return super().element_scores(module)

def test_global_prune_scores_once_and_never_copies_all_scores(monkeypatch):
    "Defaults: each layer scored once while the scores fit the cache; above it a few passes, and no tensor of all N scores"
    from torch.overrides import TorchFunctionMode
    torch.manual_seed(0)
    m = torchvision.models.resnet18(weights=None)
    crit = CountingMagnitude()
    Sparsifier(m, criterion=crit, context='global').prune(0.9)
    assert set(crit.calls.values()) == {1}
    class Biggest(TorchFunctionMode):
        "The largest tensor any torch operation returns"
        biggest = 0
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for o in (out if isinstance(out, (tuple, list)) else [out]):
                if isinstance(o, torch.Tensor): Biggest.biggest = max(Biggest.biggest, o.numel())
            return out
    m2 = torchvision.models.resnet18(weights=None)
    crit2 = CountingMagnitude()
    sp = Sparsifier(m2, criterion=crit2, context='global')
    monkeypatch.setattr(Sparsifier, 'max_cached_scores', 1000)     # far below the 11M scores: recompute per pass
    with torch.no_grad(), Biggest(): sp.prune(0.9)
    assert sp.groups_pruned() == round(0.9 * sp.n_groups)
    assert max(crit2.calls.values()) <= 3                           # sample, count and gather, the floor's exact pick
    largest_layer = max(l.weight.numel() for l in sp.layers.values())
    assert Biggest.biggest <= largest_layer < sp.n_groups            # per-layer tensors only, never all N scores at once

@pytest.mark.parametrize('context', ['local', 'global'])
def test_round_to_follows_a_rising_schedule(context):
    "Rounding to the nearest multiple may prune more than a target asked: the next, higher target is no error"
    torch.manual_seed(0)
    sp = Sparsifier(digits_cnn(), Filter(), context=context, round_to=16, example_inputs=torch.randn(1, 1, 8, 8))
    for s in [i / 40 for i in range(1, 21)]: sp.prune(s)
    for u in sp.units: assert (u.n - int(u.pruned().sum())) % 16 == 0
    with pytest.raises(ValueError, match='never shrink'): sp.prune(0.1)


@settings(max_examples=25)
@given(n=st.integers(35_000, 300_000), frac=st.floats(0.01, 0.99), levels=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_lowest_k_sampled_path_is_exact_with_ties(n, frac, levels, seed):
    "Above 32,768 scores `lowest_k` brackets from a sample: the k lowest, ties (few distinct values, -inf) in index order"
    from fastprune.units import lowest_k
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(0, levels, (n,), generator=g).float()
    s[torch.rand(n, generator=g) < 0.2] = float('-inf')   # already pruned groups
    k = max(1, int(frac * n))
    got = lowest_k(s, k)
    assert int(got.sum()) == k
    order = torch.sort(s, stable=True).indices[:k]          # reference: a stable full sort
    ref = torch.zeros(n, dtype=torch.bool); ref[order] = True
    assert torch.equal(got, ref)


@settings(max_examples=30)
@given(n=st.integers(2, 200_000), frac=st.floats(0, 0.95), more=st.floats(0, 1), levels=st.integers(0, 6), seed=st.integers(0, 2**16))
def test_lowest_k_with_a_pruned_mask_is_the_minus_inf_choice(n, frac, more, levels, seed):
    "`lowest_k(s, k, pruned=p)` selects every pruned group, then the lowest others in index order: as -inf scores would"
    from fastprune.units import lowest_k
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(0, levels, (n,), generator=g).float() if levels else torch.randn(n, generator=g)
    pruned = torch.rand(n, generator=g) < frac
    s[pruned] = torch.randn(int(pruned.sum()), generator=g) * 10   # what pruned groups score does not matter
    c = int(pruned.sum())
    k = min(n, c + 1 + int(more * (n - c - 1)))
    if k <= c: return
    got = lowest_k(s, k, pruned=pruned, n_pruned=c if seed % 2 else None)
    order = torch.sort(torch.where(pruned, float('-inf'), s), stable=True).indices[:k]   # reference: a stable full sort
    ref = torch.zeros(n, dtype=torch.bool); ref[order] = True
    assert torch.equal(got, ref) and int(got.sum()) == k
    if c:
        with pytest.raises(ValueError, match='already pruned'): lowest_k(s, c, pruned=pruned)   # no new group to select


def test_lowest_k_sample_sees_every_kernel_position():
    "The sampled bracket holds on a trained-looking 512x512x3x3 layer whose kernel centres are larger than its corners"
    from fastprune.units import _lowest_k_sampled
    g = torch.Generator().manual_seed(0)
    w = torch.randn(512, 512, 3, 3, generator=g) * torch.tensor([[1, 2, 1], [2, 4, 2], [1, 2, 1.]])
    s = w.abs().flatten()
    for q in (0.3, 0.5, 0.85, 0.95):   # a stride of n // 16384 = 144 samples one kernel position only: these all missed
        k = int(q * s.numel())
        got = _lowest_k_sampled(s, k)
        assert got is not None, f"the sample missed the {q:.0%} quantile"
        assert int(got.sum()) == k and torch.equal(got, s <= s.kthvalue(k).values)


@settings(max_examples=50)
@given(n=st.integers(0, 20_000), frac=st.floats(0, 1), specials=st.booleans(), seed=st.integers(0, 2**16))
def test_mask_scores_equals_where(n, frac, specials, seed):
    "`mask_scores` gives `torch.where(pruned, -inf, s)` bit for bit, also with NaN, +-inf and -0 scores"
    from fastprune.units import mask_scores
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, generator=g)
    if specials and n:
        pick = torch.randint(0, 5, (n,), generator=g)
        s[pick == 1] = float('nan'); s[pick == 2] = float('inf'); s[pick == 3] = float('-inf'); s[pick == 4] = -0.
    pruned = torch.rand(n, generator=g) < frac
    got, ref = mask_scores(s, pruned), torch.where(pruned, float('-inf'), s)
    assert torch.equal(got.view(torch.int32), ref.view(torch.int32)) or torch.equal(got.isnan(), ref.isnan()) and \
        torch.equal(got.nan_to_num(0.5), ref.nan_to_num(0.5)) and torch.equal(got.signbit(), ref.signbit())


def test_remove_releases_the_float_masks():
    "`apply_masks` keeps one float copy of each masked layer's mask (rewritten in place at each update); `remove` frees them"
    m = mlp(); sp = Sparsifier(m).prune(0.5)
    k1 = sp.masked_weights()[0][1]
    sp.prune(0.7)
    k2 = sp.masked_weights()[0][1]
    assert k2 is k1 and torch.equal(k2.bool(), m[0].prune_mask)   # the same tensor, holding the new mask
    sp.remove()
    assert sp._keeps == {}
