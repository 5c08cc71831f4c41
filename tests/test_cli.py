"The `fastprune` command: a short default run, the files it writes, the report it prints, and the errors of bad options."
import contextlib, io, os, re, shutil, subprocess, sys
from pathlib import Path
import pytest
import torch
from fastprune.cli import main, fastprune_parser, default_out_dir, SCHEDULES, GRANULARITIES, CRITERIA

PNG = b'\x89PNG\r\n\x1a\n'
OPTIONS = ['--sparsity', '--schedule', '--start', '--end', '--steps', '--granularity', '--criterion', '--context', '--normalize',
           '--epochs', '--dense-epochs', '--lr', '--bs', '--seed', '--threads', '--scratch', '--round-to', '--recalibrate-bn',
           '--distill', '--export', '--quantize', '--regularize', '--lam', '--sweep', '--out']


def _console_script():
    "The `fastprune` executable installed next to this Python (editable install), else the one on PATH"
    exe = Path(sys.executable).parent/'fastprune'
    return str(exe) if exe.exists() else shutil.which('fastprune')


def _run_main(argv, cwd=None):
    "Run `main(argv)` in `cwd`, returning (exit code, stdout)"
    out, old = io.StringIO(), os.getcwd()
    try:
        if cwd: os.chdir(cwd)
        with contextlib.redirect_stdout(out): code = main(argv)
    finally: os.chdir(old)
    return code, out.getvalue()


def _float_after(label, text):
    m = re.search(re.escape(label) + r'\s*([0-9.]+)', text)
    assert m, f"{label!r} not in the report:\n{text}"
    return float(m[1])


def test_help_through_console_script():
    exe = _console_script()
    assert exe, "the fastprune console script is not installed (pip install -e .)"
    r = subprocess.run([exe, '--help'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for opt in OPTIONS: assert opt in r.stdout, f"{opt} missing from --help"
    for name in [*SCHEDULES, *GRANULARITIES, *CRITERIA]: assert name in r.stdout


def test_bad_value_through_console_script():
    r = subprocess.run([_console_script(), '--schedule', 'exponential'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "'exponential'" in r.stderr and all(repr(s) in r.stderr for s in SCHEDULES)


# A default run on one epoch per phase, in a fresh folder: the output folder is then the default one under the cwd.
@pytest.fixture(scope='module')
def default_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp('cwd')
    code, text = _run_main(['--epochs', '1'], cwd=cwd)
    runs = list((cwd/'fastprune_out').iterdir())
    return code, text, runs


@pytest.mark.slow
def test_default_run_exit_code_and_folder(default_run):
    code, text, runs = default_run
    assert code == 0
    assert len(runs) == 1 and runs[0].name.startswith('run-')
    assert str(Path('fastprune_out')/runs[0].name) in text  # the folder is named in the output


@pytest.mark.slow
def test_default_run_files(default_run):
    _, text, (out,) = default_run
    names = sorted(f.name for f in out.iterdir())
    assert names == ['layer_sparsity.png', 'pruned_model.pt', 'report.md', 'schedule.png', 'tradeoff.png']
    for f in out.glob('*.png'):
        b = f.read_bytes()
        assert len(b) > 1000 and b[:8] == PNG, f"{f.name} is not a PNG"
        assert f.name in text  # every path is printed
    md = (out/'report.md').read_text()
    assert '| layer' in md and 'accuracy' in md and 'theoretical speedup' in md


@pytest.mark.slow
def test_default_run_report_figures(default_run):
    _, text, _ = default_run
    for s in ['accuracy: dense', 'pruned', 'per-layer sparsity', 'compression ratio', 'theoretical speedup',
              'agp(start=0.0, end=0.8)', 'local context', 'Weight()', 'Magnitude(', 'sparsity of the pruned layers: 80.00%',
              'sparsity of all conv/linear weights', 'total, pruned layers', 'total, all layers']:
        assert s in text, f"{s!r} missing from the report"
    assert '\r' not in text and '█' not in text   # not a terminal: no progress-bar frames, one line per epoch
    m = re.search(r'pruned: target 80\.00% of the weights, ([\d,]+) of ([\d,]+) weights', text)
    assert m, text
    assert int(m[1].replace(',', '')) / int(m[2].replace(',', '')) == pytest.approx(0.8, abs=1e-4)
    assert 0.8 < _float_after('pruned', text.split('accuracy: dense')[1]) <= 1
    assert _float_after('compression ratio:', text) > 3
    assert _float_after('theoretical speedup', text) > 3
    for layer in ['0.0', '1.0', '2.0']: assert re.search(rf'^\s*{re.escape(layer)}\s+Conv2d', text, re.M)


@pytest.mark.slow
def test_default_run_model_loads_and_matches_report(default_run):
    from fastprune.data import digits_dls
    from fastprune.metrics import compression_ratio
    _, text, (out,) = default_run
    m = torch.load(out/'pruned_model.pt', weights_only=False).eval()
    assert not any(n.endswith('prune_mask') for n, _ in m.named_buffers())
    convs = [mod.weight for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
    zeros = sum(int((w == 0).sum()) for w in convs) / sum(w.numel() for w in convs)
    assert zeros == pytest.approx(0.8, abs=1e-3)
    dls = digits_dls(seed=42)
    with torch.no_grad():
        correct = sum(int((m(x).argmax(1) == y).sum()) for x, y in dls.valid)
        assert m(dls.valid.one_batch()[0]).shape[1] == 10
    acc = correct / len(dls.valid_ds)
    assert acc == pytest.approx(_float_after('pruned', text.split('accuracy: dense')[1]), abs=1e-4)
    assert compression_ratio(m) == pytest.approx(_float_after('compression ratio:', text), abs=0.006)


@pytest.mark.slow
def test_saved_model_loads_without_fastprune(default_run):
    _, _, (out,) = default_run
    code = ("import sys, torch; m = torch.load(sys.argv[1], weights_only=False); "
            "y = m(torch.rand(4, 1, 8, 8)); assert y.shape == (4, 10); "
            "assert not any(k.startswith('fastprune') for k in sys.modules), 'fastprune was imported'")
    r = subprocess.run([sys.executable, '-c', code, str(out/'pruned_model.pt')], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_filter_run_compacts(tmp_path):
    pytest.importorskip('fastprune.compact')
    code, text = _run_main(['--epochs', '1', '--granularity', 'filter', '--sparsity', '0.5', '--out', str(tmp_path)])
    assert code == 0
    assert 'compacted model:' in text and 'measured latency' in text
    assert re.search(r'pruned: target 50\.00% of the filters, 112 of 224 filters \(50\.00% of filters\)', text), text  # 32+64+128
    m = torch.load(tmp_path/'compacted_model.pt', weights_only=False).eval()
    assert m(torch.rand(4, 1, 8, 8)).shape == (4, 10)
    assert not any(n.endswith('prune_mask') for n, _ in m.named_buffers())
    n_params = sum(p.numel() for p in m.parameters())
    assert n_params < 0.5 * 94_186  # the dense digits CNN has 94,186 parameters
    speed = float(re.search(r'([0-9.]+)x faster', text)[1])
    assert speed > 0
    assert _float_after('accuracy', text.split('compacted model:')[1]) == pytest.approx(
        _float_after('pruned', text.split('accuracy: dense')[1]), abs=1e-4)


@pytest.mark.parametrize('argv, shown', [
    (['--schedule', 'exponential'], ['exponential', *SCHEDULES]),
    (['--sparsity', '1.5'], ['1.5', '[0, 1)']),
    (['--sparsity', '-0.1'], ['-0.1', '[0, 1)']),
    (['--sparsity', 'lots'], ['lots', '[0, 1)']),
    (['--granularity', 'block'], ['block', *GRANULARITIES, 'N:M']),
    (['--granularity', '4:2'], ['4:2', 'N:M']),
    (['--criterion', 'l2'], ['l2', *CRITERIA]),
    (['--context', 'world'], ['world', 'local', 'global']),
    (['--normalize', 'l3'], ['l3', 'auto', 'none', 'l2']),
    (['--epochs', '0'], ['--epochs', "'0'", '>= 1']),
    (['--lr', '-1'], ['--lr', "'-1'", 'positive']),
    (['--end', '0'], ['--end', "'0'", '(0, 1]']),
    (['--nonsense'], ['--nonsense']),
])
def test_bad_options_exit_2_naming_value_and_allowed(argv, shown, capsys, tmp_path):
    with pytest.raises(SystemExit) as e: main(argv + ['--out', str(tmp_path/'never')])
    assert e.value.code == 2
    err = capsys.readouterr().err
    for s in shown: assert s in err, f"{s!r} not in {err!r}"
    assert not (tmp_path/'never').exists()


@pytest.mark.parametrize('argv, shown', [
    (['--criterion', 'bnscale'], ['bnscale', 'Filter']),
    (['--criterion', 'fpgm', '--granularity', 'kernel'], ['fpgm', 'kernel', 'Filter']),
    (['--criterion', 'taylor', '--schedule', 'one-shot'], ['taylor', 'one-shot', '--start 0.1']),
    (['--granularity', 'nm', '--sparsity', '0.8'], ['0.8', '0.5']),
    (['--start', '0.5', '--end', '0.2'], ['--start 0.5', '--end 0.2']),
    (['--quantize', 'int8'], ['--quantize int8', '--export onnx']),
    (['--round-to', '8'], ['--round-to 8', 'filter']),
    (['--scratch', '--distill'], ['--distill', '--scratch']),
])
def test_bad_combinations_exit_2_before_training(argv, shown, capsys, tmp_path):
    with pytest.raises(SystemExit) as e: main(argv + ['--out', str(tmp_path/'never')])
    assert e.value.code == 2
    err = capsys.readouterr().err
    for s in shown: assert s in err, f"{s!r} not in {err!r}"
    assert not (tmp_path/'never').exists()  # nothing trained, nothing written


def test_out_that_is_a_file_is_rejected(capsys, tmp_path):
    f = tmp_path/'file.txt'; f.write_text('x')
    with pytest.raises(SystemExit) as e: main(['--out', str(f)])
    assert e.value.code == 2 and 'not a folder' in capsys.readouterr().err


def test_default_out_dir_is_new(tmp_path):
    a = default_out_dir(tmp_path/'fastprune_out')
    assert a.parent == tmp_path/'fastprune_out' and a.name.startswith('run-') and not a.exists()
    a.mkdir(parents=True)
    b = default_out_dir(tmp_path/'fastprune_out')
    assert b != a and not b.exists()


def test_defaults():
    o = fastprune_parser().parse_args([])
    assert (o.sparsity, o.schedule, o.granularity, o.criterion, o.context, o.epochs) == (None, 'agp', 'weight', 'magnitude', 'local', 5)


@pytest.mark.slow
def test_nm_run_leaves_first_conv_dense_and_saves_2_4_pattern(tmp_path):
    code, text = _run_main(['--epochs', '1', '--granularity', 'nm', '--out', str(tmp_path)])
    assert code == 0
    assert "left dense: '0.0'" in text and 'of 23,040 2:4 blocks (100.00% of 2:4 blocks)' in text and 'target 50.00%' in text
    m = torch.load(tmp_path/'pruned_model.pt', weights_only=False)
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert bool((convs[0].weight != 0).all())  # 9 inputs per filter: not a multiple of 4, left dense
    for c in convs[1:]:
        blocks = (c.weight.reshape(c.weight.shape[0], -1) != 0).reshape(-1, 4).sum(1)
        assert bool((blocks <= 2).all())   # a hardware format: every block of every pruned layer


@pytest.mark.slow
def test_nm_global_is_a_2_4_model(tmp_path):
    "N:M in global context: no floor, every block of every pruned layer is 2:4"
    code, text = _run_main(['--epochs', '1', '--granularity', 'nm', '--context', 'global', '--out', str(tmp_path)])
    assert code == 0 and '(100.00% of 2:4 blocks)' in text
    m = torch.load(tmp_path/'pruned_model.pt', weights_only=False)
    for c in [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)][1:]:
        assert bool(((c.weight.reshape(c.weight.shape[0], -1) != 0).reshape(-1, 4).sum(1) <= 2).all())


@pytest.mark.slow
def test_sweep_and_loss_hint(tmp_path):
    "--sweep prunes a separate copy per target (a real trade-off); a run that loses > 10 points says what helps"
    code, text = _run_main(['--epochs', '1', '--schedule', 'one-shot', '--start', '0.9', '--sparsity', '0.97',
                            '--sweep', '0.5', '--out', str(tmp_path)])
    assert code == 0
    assert 'sweep: a separate copy pruned to each target' in text and re.search(r'50%\s+50\.00%\s+0\.\d{4}', text)
    dense, pruned = (float(v) for v in re.search(r'accuracy: dense ([\d.]+), pruned ([\d.]+)', text).groups())
    assert dense - pruned > 0.1 and 'what usually helps' in text and '--epochs 2' in text


@pytest.mark.slow
def test_filter_run_exports_onnx_and_int8(tmp_path):
    "--export onnx --quantize int8: both files written, verified, timed in ONNX Runtime, and in report.md"
    pytest.importorskip('onnxruntime')
    code, text = _run_main(['--epochs', '1', '--granularity', 'filter', '--sparsity', '0.5', '--round-to', '16',
                            '--recalibrate-bn', '--distill', '--export', 'onnx', '--quantize', 'int8', '--out', str(tmp_path)])
    assert code == 0
    assert (tmp_path/'model.onnx').stat().st_size > 1000 and (tmp_path/'model.int8.onnx').stat().st_size > 1000
    md = (tmp_path/'report.md').read_text()
    assert 'measured speed-up (ONNX Runtime)' in md and 'top-1 agreement' in md
    assert 'round_to=16' in text and 'distilled from the dense model' in text and 'distill' in text
    m = torch.load(tmp_path/'compacted_model.pt', weights_only=False)
    assert all(c.out_channels % 16 == 0 for c in m.modules() if isinstance(c, torch.nn.Conv2d))


@pytest.mark.slow
def test_activation_criterion_and_slimming(tmp_path):
    "The activation criteria are CLI names too, and --regularize slimming adds its penalty column before pruning starts"
    code, text = _run_main(['--epochs', '2', '--granularity', 'filter', '--sparsity', '0.5', '--criterion', 'apoz',
                            '--schedule', 'one-shot', '--start', '0.5', '--regularize', 'slimming', '--lam', '1e-3',
                            '--out', str(tmp_path)])
    assert code == 0 and 'APoZ(' in text and 'slimming penalty (lam 0.001)' in text and 'penalty' in text
    assert re.search(r'112 of 224 filters', text)
