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

def test_callback_overhead_times_the_hooks():
    "the callback benchmark's fit reaches the target and counts the time inside the callback's hooks (0 for dense)"
    mod = _load(BENCH/'callback_overhead.py')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        wall, cpu, acc, sp, hooks = mod.train('agp90', 1)
        assert abs(sp - 0.9) < 1e-3 and 0 < hooks < wall
        assert mod.train('dense', 1)[4] == 0
