"Smoke tests for `benchmarks/`: every script imports, and the compaction speed benchmark runs end to end on a tiny input"
import importlib.util, pathlib, warnings
import pytest

BENCH = pathlib.Path(__file__).parent.parent/'benchmarks'

def _load(path):
    spec = importlib.util.spec_from_file_location(f'bench_{path.stem}', path)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod

@pytest.mark.parametrize('path', sorted(BENCH.glob('*.py')), ids=lambda p: p.name)
def test_benchmark_imports(path):
    "a script whose imports rot fails here, not on the next person who wants its figures"
    assert callable(_load(path).main)

@pytest.mark.slow
def test_compact_speed_runs(capsys):
    "every form is timed (or skipped with a reason) for dense, Torch-Pruning and fastprune; the same architecture comes out"
    mod = _load(BENCH/'compact_speed.py')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        mod.main(runs=2, warmup=1, threads=1, bs=1, size=64, all_forms=True)
    out = capsys.readouterr().out
    assert 'MAC ratio' in out and 'same architecture: True' in out
    for form in ('eager', 'bn-folded', 'folded+NHWC', 'TorchScript', 'inductor'):
        assert any(l.startswith(f'{form}: latency') or l.startswith(form) and 'skipped:' in l for l in out.splitlines()), form
    assert 'fastprune / Torch-Pruning speed-up' in out and 'aten::mkldnn_convolution' in out
    assert 'bound:' in out and 'measured / bound' in out

def test_compact_speed_bound_helpers():
    "the bound counts convolution outputs (halved with half the channels) and classes operators by the MACs they do"
    import torch, torchvision
    mod = _load(BENCH/'compact_speed.py')
    x = torch.randn(1, 3, 32, 32)
    m = torchvision.models.resnet18().eval()
    half = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 2, 1))
    full = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 4, 1))
    assert mod.conv_outputs(full, x) == 2 * mod.conv_outputs(half, x) == 2 * 6 * 30 * 30
    assert mod.conv_outputs(m, x) > 0 and not any(c._forward_hooks for c in m.modules())   # hooks removed
    assert all(map(mod._is_mac_op, ['aten::mkldnn_convolution', 'aten::addmm', 'aten::_convolution', 'aten::mm']))
    assert not any(map(mod._is_mac_op, ['aten::max_pool2d_with_indices', 'aten::add', 'aten::clamp_min_', 'aten::empty']))

def test_callback_overhead_times_the_hooks():
    "the callback benchmark's fit reaches the target and counts the time inside the callback's hooks (0 for dense)"
    mod = _load(BENCH/'callback_overhead.py')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        r = mod.train('agp90', 1)
        assert abs(r.sparsity - 0.9) < 1e-3 and 0 < r.events_s < r.hooks_s < r.wall
        assert 8 <= r.n_events <= 17 and r.n_steps == 22   # at most 16 updates on the grid and the final one
        d = mod.train('dense', 1)
        assert d.hooks_s == d.events_s == d.n_events == 0 and d.n_steps == 22
        fit = mod.cost_model(d.wall, d.n_steps, r.hooks_s, r.events_s, r.n_events)
        assert fit['per_step'] == pytest.approx((r.hooks_s - r.events_s) / d.wall)
        assert fit['event_steps'] == pytest.approx(r.events_s / r.n_events / (d.wall / d.n_steps))
        assert fit['min_steps'] is None or fit['min_steps'] > 0
