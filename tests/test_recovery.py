"Behaviour tests for `fastprune.recovery`: the distillation loss and callback, BatchNorm recalibration"
import copy, math, random, warnings
import numpy as np
import pytest, torch
from torch import nn
import torch.nn.functional as F
from fastai.callback.core import Callback
from fastai.callback.progress import ProgressCallback
from fastai.callback.training import GradientAccumulation
from fastai.callback.fp16 import MixedPrecision
import fastai.callback.schedule  # Learner.fit_one_cycle, fine_tune
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy
from fastprune.data import digits_dls, digits_cnn, digits_learner, noisy_digits_dls
from fastprune.granularity import Weight, Filter
from fastprune.schedules import one_shot, agp
from fastprune.sparsifier import Sparsifier
from fastprune.callback import PruneCallback
from fastprune.compact import compact
from fastprune.metrics import sensitivity_analysis
from fastprune.recovery import *

warnings.filterwarnings('ignore', message='.*CUDA is not available.*')
warnings.filterwarnings('ignore', category=FutureWarning)

# torch runs on one thread in this module: see `one_thread` in conftest.py
pytestmark = pytest.mark.usefixtures('one_thread')

def quiet(learn):
    learn.remove_cb(ProgressCallback)
    learn.logger = lambda *a, **k: None
    return learn

def tiny_learner(cbs=None, seed=0, bs=128, model=None, **kwargs):
    "A small digits learner (12 training batches per epoch), no progress bar"
    torch.manual_seed(seed)
    dls = digits_dls(bs=bs)
    for dl in dls.loaders: dl.fake_l.num_workers = 0
    model = model if model is not None else digits_cnn(widths=(8, 16, 32))
    kwargs.setdefault('metrics', accuracy)
    return quiet(Learner(dls, model, loss_func=CrossEntropyLossFlat(), cbs=cbs, **kwargs))

@pytest.fixture(scope='module')
def trained():
    "A trained tiny digits CNN (state dict)"
    learn = tiny_learner()
    learn.fit_one_cycle(3, 1e-2)
    return copy.deepcopy(learn.model.state_dict())

def from_state(sd, **kwargs):
    m = digits_cnn(widths=(8, 16, 32)); m.load_state_dict(sd)
    return tiny_learner(model=m, **kwargs)

def acc(learn): return float(learn.validate()[1]) if len(learn.metrics) else None

# ---------------------------------------------------------------- the distillation loss

def _softmax(z):
    e = [math.exp(v - max(z)) for v in z]
    return [v/sum(e) for v in e]

def test_kd_loss_by_hand():
    "T² · KL(p_t ‖ p_s) at temperature T, averaged over samples, against plain-Python arithmetic"
    s = [[0.5, -1.0, 2.0, 0.0], [3.0, 0.0, 0.0, -2.0], [0.0, 0.0, 0.0, 0.0]]
    t = [[1.0, 0.0, 1.5, -0.5], [0.0, 2.0, 0.0, 0.0], [4.0, -4.0, 0.0, 1.0]]
    for T in (1., 2.5, 4.):
        kl = [sum(pt*math.log(pt/ps) for pt, ps in zip(_softmax([v/T for v in ti]), _softmax([v/T for v in si])))
              for si, ti in zip(s, t)]
        expected = T*T*sum(kl)/len(kl)
        got = kd_loss(torch.tensor(s), torch.tensor(t), T)
        assert float(got) == pytest.approx(expected, rel=1e-6)
    assert float(kd_loss(torch.tensor(s), torch.tensor(s))) == pytest.approx(0., abs=1e-7)
    # float16/bfloat16 logits are computed in float32
    assert kd_loss(torch.tensor(s).half(), torch.tensor(t).bfloat16()).dtype == torch.float32

def test_kd_gradient_scale():
    "Hinton et al.: with the T² factor the soft-target gradient wrt the logits, T·(p_s - p_t), stays about (s-t)/C for large T"
    torch.manual_seed(0)
    s0, t = torch.randn(256, 10), torch.randn(256, 10)
    norms = []
    for T in (4., 8., 16.):
        s = s0.clone().requires_grad_()
        kd_loss(s, t, T).backward()
        norms.append(float(s.grad.norm()))
    assert max(norms)/min(norms) < 1.3

# ---------------------------------------------------------------- the callback

class Record(Callback):
    "After DistillCallback's after_loss (order 5) and before GradientAccumulation (6): what is back-propagated"
    order = 5.5
    def __init__(self): self.rows = []
    def after_loss(self):
        if self.training: self.rows.append((self.learn.loss_grad.detach().clone(), self.learn.loss.detach().clone(),
                                            self.learn.pred.detach().clone(), [x.clone() for x in self.learn.xb],
                                            self.learn.yb[0].clone()))

def test_loss_grad_is_the_formula(trained):
    "loss_grad = (1-alpha)·task + alpha·T²·KL; learn.loss (the table's, the Recorder's) stays the task loss"
    teacher = digits_cnn(widths=(8, 16, 32)); teacher.load_state_dict(trained); teacher.eval()
    torch.manual_seed(1)
    student = digits_cnn(widths=(8, 16, 32))           # a different network: the KD term is far from 0
    rec = Record()
    learn = tiny_learner(model=student, cbs=[DistillCallback(copy.deepcopy(teacher), T=3., alpha=0.3), rec])
    learn.fit(1, 1e-3)
    assert len(rec.rows) == len(learn.dls.train)
    for lg, loss, pred, xb, yb in rec.rows[:3]:
        with torch.no_grad(): tout = teacher(*xb)
        task = F.cross_entropy(pred, yb)
        assert float(loss) == pytest.approx(float(task), rel=1e-5)
        assert float(lg) == pytest.approx(float(0.7*task + 0.3*kd_loss(pred, tout, 3.)), rel=1e-5)
        assert float(lg) != pytest.approx(float(loss), rel=1e-3)
    # the Recorder's smoothed loss is built from the task loss only
    assert learn.recorder.losses[0] == pytest.approx(float(rec.rows[0][1]), rel=1e-5)

def test_teacher_never_changes(trained):
    "teacher=None: a snapshot of the dense model, never trained, never pruned, frozen, in eval mode, at every batch"
    learn = from_state(trained)
    dense = copy.deepcopy(learn.model.state_dict())
    kd, prune = DistillCallback(), PruneCallback(0.8, schedule=agp(0, 0.6), report=False)
    seen = []
    class Watch(Callback):
        order = 20
        def after_step(self):
            t = kd.teacher
            seen.append(all(torch.equal(v, dense[k]) for k, v in t.state_dict().items()) and not t.training
                        and len(t.state_dict()) == len(dense))
    learn.fit_one_cycle(2, 1e-2, cbs=[kd, prune, Watch()])
    assert len(seen) == 2*len(learn.dls.train) and all(seen)
    assert not any('prune_mask' in n for n, _ in kd.teacher.named_buffers())
    assert all(not p.requires_grad for p in kd.teacher.parameters())
    opt_params = {id(p) for g in learn.opt.param_lists for p in g}
    assert not opt_params & {id(p) for p in kd.teacher.parameters()}
    assert kd.teacher not in list(prune.sparsifier.model.modules())

@pytest.mark.parametrize('granularity,target', [(Weight(), 0.8), (Filter(), 0.5)])
def test_distill_and_prune_reach_exact_sparsity(trained, granularity, target):
    kd, prune = DistillCallback(), PruneCallback(target, granularity, schedule=agp(0, 0.5), report=False)
    learn = from_state(trained)
    learn.fit_one_cycle(2, 1e-2, cbs=[kd, prune])
    sp = prune.sparsifier
    assert sum(int(u.pruned().sum()) for u in sp.units) == sp.target_groups(target) - sp.shortfall
    assert sp.shortfall == 0
    if granularity == Weight(): assert sp.sparsity() == pytest.approx(target, abs=1e-4)
    assert math.isfinite(kd.epoch_loss) and kd.epoch_loss > 0
    assert acc(learn) > 0.5

def test_column_and_cleanup(trained):
    "a `distill` column while fitting, gone afterwards; validate() runs no teacher and adds nothing"
    kd = DistillCallback()
    learn = from_state(trained, metrics=[])
    learn.fit(1, 1e-3, cbs=kd)
    assert learn.recorder.metric_names[-2] == 'distill'
    assert learn.recorder.values[-1][-1] == pytest.approx(kd.epoch_loss)
    assert learn.metrics == []
    learn.add_cb(kd)
    calls = []
    kd.teacher.register_forward_hook(lambda *a: calls.append(1))
    learn.validate()
    assert not calls and learn.metrics == []

def test_teacher_shape_mismatch(trained):
    learn = from_state(trained, cbs=DistillCallback(digits_cnn(n_out=7, widths=(8, 16, 32))))
    with pytest.raises(ValueError, match=r"\(128, 7\).*\(128, 10\)"): learn.fit(1)

def test_teacher_errors():
    with pytest.raises(ValueError, match='`T`'): DistillCallback(T=-1)
    with pytest.raises(ValueError, match='`alpha`'): DistillCallback(alpha=2)
    with pytest.raises(TypeError, match='`loss`'): DistillCallback(loss=3)
    learn = tiny_learner()
    with pytest.raises(ValueError, match='shares parameters'): learn.fit(1, cbs=DistillCallback(learn.model))

def test_teacher_from_learner_and_warning(trained):
    dense = from_state(trained)
    kd = DistillCallback(dense)      # a Learner: its model is the teacher
    assert kd.teacher is dense.model
    pruned = from_state(trained)
    Sparsifier(pruned.model).prune(0.5)
    with pytest.warns(UserWarning, match='already pruned'): pruned.fit(1, 1e-3, cbs=DistillCallback())

def test_lr_find_and_fine_tune_keep_one_teacher(trained, tmp_path):
    "lr_find (which restores the model) then fine_tune: one teacher for all fits, the model as it was before them"
    learn = from_state(trained, path=tmp_path)
    dense = copy.deepcopy(learn.model.state_dict())
    kd = DistillCallback()
    learn.add_cb(kd)
    learn.lr_find(num_it=5, show_plot=False)
    learn.remove_cb(kd)
    t0 = kd.teacher
    prune = PruneCallback(0.7, schedule=one_shot(), report=False)
    learn.fine_tune(1, 1e-3, freeze_epochs=1, cbs=[kd, prune])
    t = kd.teacher
    assert t is t0 and all(torch.equal(v, dense[k]) for k, v in t.state_dict().items())
    assert prune.sparsifier.sparsity() == pytest.approx(0.7, abs=1e-4)
    assert acc(learn) > 0.8

def test_gradient_accumulation(trained):
    "GradientAccumulation (order 6) divides the whole distillation objective, not only the task part"
    class AfterGA(Callback):
        order = 6.5
        def __init__(self): self.lg = []
        def after_loss(self):
            if self.training: self.lg.append(float(self.learn.loss_grad))
    rec, after = Record(), AfterGA()
    learn = from_state(trained, cbs=[DistillCallback(), rec, after, GradientAccumulation(n_acc=256)])
    learn.fit(1, 1e-3)
    for (lg, *_), a in zip(rec.rows, after.lg): assert a == pytest.approx(float(lg)/2, rel=1e-5)   # 256/128
    assert math.isfinite(learn.recorder.losses[-1])

def test_to_fp16_runs(trained):
    "to_fp16: fastai's MixedPrecision autocasts on 'cuda' only, so on a CPU-only run it trains in fp32 and must still work"
    learn = from_state(trained).to_fp16()
    kd = DistillCallback()
    learn.fit(1, 1e-3, cbs=[kd, PruneCallback(0.5, schedule=one_shot(), report=False)])
    assert math.isfinite(kd.epoch_loss) and math.isfinite(learn.recorder.losses[-1])

def test_cpu_autocast_bf16(trained):
    "Under a CPU bfloat16 autocast (what MixedPrecision does on CUDA, here on 'cpu'): teacher in bf16, loss finite"
    class CPUAutocast(Callback):
        order = MixedPrecision.order
        def before_batch(self): self.ac = torch.autocast('cpu', dtype=torch.bfloat16); self.ac.__enter__()
        def after_pred(self): self.learn.pred = self.learn.pred.float()
        def after_loss(self): self.ac.__exit__(None, None, None)
    dtypes = []
    class Peek(Callback):   # right after DistillCallback.after_pred: the teacher's output
        order = 5.5
        def after_pred(self):
            if self.training: dtypes.append(kd._out.dtype)
    kd = DistillCallback()
    learn = from_state(trained, cbs=[CPUAutocast(), kd, Peek()])
    learn.fit(1, 1e-3)
    assert dtypes and dtypes[0] == torch.bfloat16
    assert math.isfinite(kd.epoch_loss) and math.isfinite(learn.recorder.losses[-1])

def test_data_parallel_teacher_unwrapped(trained):
    "a wrapped student (DataParallel, DDP): the snapshot is the plain module"
    m = digits_cnn(widths=(8, 16, 32)); m.load_state_dict(trained)
    learn = tiny_learner(model=nn.DataParallel(m))
    kd = DistillCallback()
    learn.fit(1, 1e-3, cbs=kd)
    assert type(kd.teacher) is nn.Sequential

# ---------------------------------------------------------------- BatchNorm recalibration

def test_only_bn_statistics_change(trained):
    "parameters and masks bit-identical; the running statistics (and their batch counter) change; modes and momenta restored"
    learn = from_state(trained)
    Sparsifier(learn.model, Filter(), example_inputs=learn.dls.one_batch()[0][:2]).prune(0.5)
    m = learn.model
    m.train(); m[1].eval(); m[2][0].eval()                 # a mix of modes
    modes = [x.training for x in m.modules()]
    m[0][1].momentum = 0.3
    before = copy.deepcopy(m.state_dict())
    params = {n: p.detach().clone() for n, p in m.named_parameters()}
    recalibrate_bn(m, learn.dls)
    after = m.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.rsplit('.', 1)[1] in ('running_mean', 'running_var', 'num_batches_tracked') for k in changed)
    for n, p in m.named_parameters(): assert torch.equal(p, params[n])
    assert [x.training for x in m.modules()] == modes
    assert m[0][1].momentum == 0.3 and m[1][1].momentum == 0.1
    assert all(int(b.num_batches_tracked) == 10 for b in bn_layers(m).values())

def test_cumulative_average_is_exact():
    "momentum=None: the running mean is the mean of the batch means, the running var the mean of the unbiased batch vars"
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(3)
    batches = [torch.randn(16, 3)*torch.tensor([1., 2., 3.]) + 5 for _ in range(4)]
    recalibrate_bn(nn.Sequential(bn), batches, n_batches=None)
    torch.testing.assert_close(bn.running_mean, torch.stack([b.mean(0) for b in batches]).mean(0))
    torch.testing.assert_close(bn.running_var, torch.stack([b.var(0) for b in batches]).mean(0))
    assert bn.momentum == 0.1 and bn.training   # restored: a new module is in training mode

def test_wrong_statistics_are_repaired():
    "a toy model whose BatchNorm statistics are deliberately wrong: recalibration restores its accuracy"
    torch.manual_seed(0)
    n = 2048
    y = torch.randint(0, 2, (n,))
    x = torch.randn(n, 8) + 3*y[:, None].float()*torch.tensor([1., -1, 1, -1, 1, -1, 1, -1])
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 2))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for i in range(300):
        idx = torch.randint(0, n, (64,))
        opt.zero_grad(); F.cross_entropy(model(x[idx]), y[idx]).backward(); opt.step()
    model.eval()
    accuracy = lambda: float((model(x).argmax(1) == y).float().mean())
    with torch.no_grad(): good = accuracy()
    bn = model[1]
    with torch.no_grad(): bn.running_mean.copy_(torch.linspace(-10, 10, 16)); bn.running_var.mul_(1e-2)
    with torch.no_grad(): bad = accuracy()
    batches = [(x[i:i+64], y[i:i+64]) for i in range(0, n, 64)]
    recalibrate_bn(model, batches)
    with torch.no_grad(): fixed = accuracy()
    assert good > 0.95 and bad < 0.7 and fixed == pytest.approx(good, abs=0.01)
    assert not model.training and not model[3].training

def test_compacted_and_learner_method(trained):
    learn = from_state(trained)
    xb = learn.dls.valid.one_batch()[0][:2]
    Sparsifier(learn.model, Filter(), context='global', example_inputs=xb).prune(0.5)
    masked_acc = acc(learn)
    learn.model = compact(learn.model, xb)
    assert learn.recalibrate_bn() is learn
    assert acc(learn) > masked_acc + 0.1

def test_rng_and_loader_untouched(trained):
    "recalibrating draws nothing from the global random states and leaves the loader (even mid-epoch) where it was"
    learn = from_state(trained)
    dl = learn.dls.train
    it = iter(dl); next(it)
    states = random.getstate(), np.random.get_state(), torch.get_rng_state(), dl.rng.getstate()
    recalibrate_bn(learn.model, learn.dls)
    assert random.getstate() == states[0] and torch.equal(torch.get_rng_state(), states[2])
    assert all((a == b).all() if isinstance(a, np.ndarray) else a == b for a, b in zip(np.random.get_state(), states[1]))
    assert dl.rng.getstate() == states[3]
    assert len(list(it)) == len(dl) - 1

def test_prune_callback_recalibrates_without_changing_training(trained):
    """PruneCallback(recalibrate_bn=True): the same weights as without (BatchNorm trains on batch statistics, and the
    batches and random draws are untouched), better statistics when the fit ends right after pruning"""
    res = {}
    for recal in (False, True):
        learn = from_state(trained, seed=3)
        learn.dls.train.rng = random.Random(3)
        cb = PruneCallback(0.5, Filter(), schedule=one_shot(0.95), recalibrate_bn=recal, report=False)
        learn.fit(1, 1e-3, cbs=cb)
        res[recal] = (copy.deepcopy(learn.model.state_dict()), acc(learn))
    sd0, sd1 = res[False][0], res[True][0]
    for k in sd0:
        if k.rsplit('.', 1)[1] in ('running_mean', 'running_var', 'num_batches_tracked'): continue
        assert torch.equal(sd0[k], sd1[k]), k
    assert res[True][1] > res[False][1]

def test_recalibrate_errors_and_no_bn(trained):
    learn = from_state(trained)
    with pytest.raises(ValueError, match='n_batches'): recalibrate_bn(learn.model, learn.dls, n_batches=0)
    with pytest.raises(ValueError, match='n_batches'): recalibrate_bn(learn.model, learn.dls, n_batches=True)
    with pytest.raises(TypeError, match='`data` must be'): recalibrate_bn(learn.model, 'train')
    with pytest.raises(ValueError, match='no batch'): recalibrate_bn(learn.model, [])
    plain = nn.Sequential(nn.Linear(4, 2))
    assert recalibrate_bn(plain, [torch.randn(3, 4)]) is plain       # nothing to do

def test_unreached_bn_keeps_statistics():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.BatchNorm1d(2), nn.BatchNorm1d(2)
        def forward(self, x): return self.a(x)
    m = TwoHeads()
    with torch.no_grad(): m.b.running_mean.fill_(7.)
    with pytest.warns(UserWarning, match='saw no input'): recalibrate_bn(m, [torch.randn(8, 2)])
    assert float(m.b.running_mean[0]) == 7.

def test_sensitivity_analysis_recalibrates(trained):
    "recalibrating before each point can only move the curves up for a magnitude-pruned, BN-heavy net (on average)"
    learn = from_state(trained)
    kw = dict(sparsities=(0.5, 0.9), progress=False)
    plain = sensitivity_analysis(learn.model, learn, **kw)
    recal = sensitivity_analysis(learn.model, learn, recalibrate_bn=True, **kw)
    assert recal.baseline == plain.baseline
    mean = lambda s: sum(v for c in s.curves.values() for _, v in c)/sum(len(c) for c in s.curves.values())
    assert mean(recal) > mean(plain)
    with pytest.raises(ValueError, match='bn_data'): sensitivity_analysis(learn.model, lambda m: 0., recalibrate_bn=True, **kw)

# ---------------------------------------------------------------- the harder task

def test_noisy_digits_harder():
    dls = noisy_digits_dls()
    learn = quiet(digits_learner(dls=dls))
    torch.manual_seed(0)
    learn.fit_one_cycle(2, 1e-2)
    assert acc(learn) < 0.9

# ---------------------------------------------------------------- distributed

def _ddp_worker(rank, world, out):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    warnings.filterwarnings('ignore')
    dist.init_process_group('gloo', init_method=f'file://{out}/rendezvous', rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        torch.manual_seed(0)
        model = digits_cnn(widths=(8, 16, 32))
        dense = copy.deepcopy(model.state_dict())
        dls = digits_dls(bs=128, seed=rank)
        for dl in dls.loaders: dl.fake_l.num_workers = 0
        kd = DistillCallback()
        cb = PruneCallback(0.5, schedule=one_shot(0.5), recalibrate_bn=True, report=False)
        learn = quiet(Learner(dls, DDP(model, broadcast_buffers=False), loss_func=CrossEntropyLossFlat(), cbs=[kd, cb]))
        learn.fit(1, 1e-3)
        same = all(torch.equal(v, dense[k]) for k, v in kd.teacher.state_dict().items())
        torch.save({'type': type(kd.teacher).__name__, 'same': same, 'loss': kd.epoch_loss,
                    'sparsity': cb.sparsifier.sparsity()}, f'{out}/rank{rank}.pt')
        dist.barrier()
    finally: dist.destroy_process_group()

@pytest.mark.slow
def test_ddp_teacher_is_unwrapped(tmp_path):
    "2 processes on gloo: the teacher is the plain module (not DDP), dense, and the fit (with recalibration) completes"
    import torch.multiprocessing as mp
    mp.spawn(_ddp_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    for r in range(2):
        res = torch.load(tmp_path/f'rank{r}.pt')
        assert res['type'] == 'Sequential' and res['same'] and math.isfinite(res['loss'])
        assert res['sparsity'] == pytest.approx(0.5, abs=1e-3)

# ---------------------------------------------------------------- the benchmark

@pytest.mark.slow
def test_benchmark_runs(capsys):
    "benchmarks/recovery.py end to end on a tiny budget: every method, the cost table and the three goal lines"
    import importlib.util, pathlib
    path = pathlib.Path(__file__).parent.parent/'benchmarks'/'recovery.py'
    spec = importlib.util.spec_from_file_location('bench_recovery', path)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    dense, rows = mod.run(seeds=(0, 1), epochs=1, dense_epochs=1, sparsities={'weights': (0.9,), 'filters': (0.5,)})
    assert len(rows) == 2*2*5 and len(dense) == 2
    met = mod.report(dense, rows, 1)
    out = capsys.readouterr().out
    assert set(met) == {'distillation weights 90%', 'distillation filters 50%', 'BN recalibration filters 50%'}
    assert out.count('MET') == 3 and 'time relative to fine-tuning' in out
