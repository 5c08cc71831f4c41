"Behaviour tests for `fastprune.callback.PruneCallback`: exact targets, timing, no regrowth, resume, DDP, errors"
import os, sys, copy, math, warnings
import pytest, torch
from functools import partial
from fastcore.foundation import L
from torch import nn
from fastai.callback.core import Callback
from fastai.callback.progress import ProgressCallback
from fastai.callback.tracker import SaveModelCallback
from fastai.callback.fp16 import MixedPrecision
from fastai.callback.training import GradientAccumulation
import fastai.callback.schedule  # Learner.fit_one_cycle, fine_tune
from fastai.learner import Learner
from fastai.optimizer import SGD, Adam, OptimWrapper
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy
from fastprune.data import digits_dls, digits_cnn, digits_learner
from fastprune.granularity import Weight, Filter, Kernel
from fastprune.criteria import Magnitude, Taylor, BNScale, Random
from fastprune.schedules import one_shot, iterative, agp, linear
from fastprune.callback import *

warnings.filterwarnings('ignore', message='.*CUDA is not available.*')
warnings.filterwarnings('ignore', category=FutureWarning)

# torch runs on one thread in this module: see `one_thread` in conftest.py
pytestmark = pytest.mark.usefixtures('one_thread')

def tiny_learner(cbs=None, seed=0, bs=128, shuffle=True, model=None, **kwargs):
    "A small digits learner (12 training batches per epoch), no progress bar"
    torch.manual_seed(seed)
    dls = digits_dls(bs=bs)
    if not shuffle: dls.train.shuffle = False
    for dl in dls.loaders: dl.fake_l.num_workers = 0   # 1,797 tensors in memory: worker processes only cost time
    model = model if model is not None else digits_cnn(widths=(8, 16, 32))
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), metrics=accuracy, cbs=cbs, **kwargs)
    learn.remove_cb(ProgressCallback)
    learn.logger = lambda *a, **k: None
    return learn

def masked_nonzero(sp):
    "Number of masked weights that are not exactly zero"
    return sum(int((m.weight[~m.prune_mask] != 0).sum()) for m in sp.layers.values())

def masks(sp): return {n: m.prune_mask.clone() for n, m in sp.layers.items()}

class Probe(Callback):
    "Records, after PruneCallback, the training progress and sparsity at each batch and checks masked weights after each step"
    order = PruneCallback.order + 2
    def __init__(self, cb): self.cb, self.rows, self.drift = cb, [], 0
    def before_batch(self):
        if self.training: self.rows.append((float(self.learn.pct_train), self.cb.sparsifier.sparsity()))
    def after_step(self): self.drift += masked_nonzero(self.cb.sparsifier)
    def before_validate(self): self.val_masks = masks(self.cb.sparsifier)
    def after_validate(self):
        for n, m in masks(self.cb.sparsifier).items(): assert torch.equal(m, self.val_masks[n]), 'validation changed masks'

# ---------------------------------------------------------------- exact targets and timing

@pytest.mark.parametrize('kw', [dict(sparsity=0.9), dict(sparsity=0.7, context='global'),
                                dict(sparsity=0.5, granularity=Filter()), dict(sparsity=0.6, granularity=Kernel()),
                                dict(sparsity={'0.0': 0.5, '2.0': 0.8})])
def test_final_sparsity_exact(kw):
    cb = PruneCallback(report=False, **kw)
    learn = tiny_learner(cb)
    learn.fit_one_cycle(2, 1e-2)
    sp, s = cb.sparsifier, kw['sparsity']
    g = sp.granularity
    counts = {u.name: int(u.pruned().sum()) for u in sp.units}
    if isinstance(s, dict):
        for n, u in zip(sp.layers, sp.units): assert counts[n] == (round(s[n]*u.n) if n in s else 0)
    elif kw.get('context') == 'global': assert sum(counts.values()) == round(s*sp.n_groups)
    else:
        for u in sp.units: assert counts[u.name] == round(s*u.n), (u.name, counts[u.name], u.n)
    assert masked_nonzero(sp) == 0
    assert learn.recorder.metric_names[-2] == progress_name(g) == ('sparsity' if g.unit == 'weights' else f'{g.unit}_pruned')
    assert learn.recorder.values[-1][-1] == pytest.approx(sp.pruned_fraction())   # what the target counts
    assert sp.pruned_fraction() == pytest.approx(sp.sparsity() if g.unit == 'weights' else sp.groups_pruned() / sp.n_groups)

@pytest.mark.parametrize('sched,start', [(agp(0.5, 0.9), 0.5), (one_shot(0.3), 0.3), (iterative(2, 0.25, 0.75), 0.25)])
def test_no_pruning_before_start(sched, start):
    cb = PruneCallback(0.8, schedule=sched, report=False)
    probe = Probe(cb)
    learn = tiny_learner([cb, probe])
    learn.fit_one_cycle(2, 1e-2)
    before = [s for p, s in probe.rows if p < start - 1e-9]
    after = [s for p, s in probe.rows if p >= start + 0.1]
    assert before and all(s == 0 for s in before)
    assert after and all(s > 0 for s in after)
    assert cb.sparsifier.sparsity() == pytest.approx(0.8, abs=2e-3)

def test_updates_are_rare():
    "masks are recomputed at most once per `update_every` of progress, and only when the target moved"
    n = {}
    for every in (1/8, 0):
        cb = PruneCallback(0.9, schedule=agp(0, 1.), update_every=every, report=False)
        calls = []
        learn = tiny_learner(cb)
        cb.setup(learn)
        orig = cb.sparsifier.prune
        cb.sparsifier.prune = lambda s: (calls.append(s), orig(s))[1]
        learn.fit_one_cycle(2, 1e-2)
        n[every] = len(calls)
        assert cb.sparsifier.sparsity() == pytest.approx(0.9, abs=1e-3)
    assert n[1/8] <= 8 + 1 and n[0] > n[1/8]

def test_one_shot_prunes_once():
    cb = PruneCallback(0.5, schedule=one_shot(0.5), report=False)
    learn = tiny_learner(cb)
    cb.setup(learn)
    calls = []
    orig = cb.sparsifier.prune
    cb.sparsifier.prune = lambda s: (calls.append(s), orig(s))[1]
    learn.fit_one_cycle(2, 1e-2)
    assert calls[0] == 0.5 and set(calls) == {0.5}   # the end of the fit only checks the final target (nothing moves)
    assert len(cb.history) == 1                      # one mask update

# ---------------------------------------------------------------- no regrowth

class CPUMixedPrecision(MixedPrecision):
    "fastai's MixedPrecision with autocast and GradScaler on the CPU, so real fp16 runs without CUDA"
    def before_fit(self):
        self.autocast = torch.autocast('cpu', dtype=torch.float16)
        self.learn.scaler, self.scales = torch.amp.GradScaler('cpu', init_scale=2.**16), L()

OPTS = {'sgd_mom_wd': dict(opt_func=partial(SGD, mom=0.9), wd=1e-2),
        'adamw': dict(opt_func=Adam, wd=0.1),   # fastai's Adam decouples weight decay: AdamW
        'torch_adamw': dict(opt_func=partial(OptimWrapper, opt=torch.optim.AdamW), wd=0.1)}

@pytest.mark.parametrize('opt', list(OPTS))
def test_zero_drift(opt):
    cb = PruneCallback(0.8, schedule=iterative(2, 0.1, 0.6), report=False)
    probe = Probe(cb)
    learn = tiny_learner([cb, probe], **OPTS[opt])
    learn.fit_one_cycle(6, 3e-2)       # 72 steps, 65 of them with masks
    assert probe.drift == 0
    assert masked_nonzero(cb.sparsifier) == 0
    # the optimizer state of pruned weights is zero, so nothing would push them back without the callback
    state = learn.opt.opt.state if isinstance(learn.opt, OptimWrapper) else learn.opt.state
    for m in cb.sparsifier.layers.values():
        for v in state[m.weight].values():
            if isinstance(v, torch.Tensor) and v.shape == m.weight.shape: assert (v[~m.prune_mask] == 0).all()

@pytest.mark.parametrize('opt', list(OPTS))
def test_state_zeroing_at_mask_updates_would_change_nothing(opt):
    "The state of pruned entries is zeroed once, after the fit: zeroing it at every mask update too gives the same weights, bit for bit"
    from fastprune.callback import zero_masked_state
    def fit(zero_at_updates):
        cb = PruneCallback(0.8, report=False)
        if zero_at_updates:
            orig = cb._prune
            def prune_and_zero(f): orig(f); zero_masked_state(cb.learn.opt, cb.sparsifier.masked_weights())
            cb._prune = prune_and_zero
        learn = tiny_learner([cb], **OPTS[opt])
        learn.fit_one_cycle(3, 3e-2)
        return {k: v.clone() for k, v in learn.model.state_dict().items()}
    a, b = fit(True), fit(False)
    assert all(torch.equal(a[k], b[k]) for k in a)

@pytest.mark.parametrize('mp', ['to_fp16', 'cpu_fp16', 'cpu_bf16'])
def test_zero_drift_mixed_precision(mp):
    cb = PruneCallback(0.8, schedule=one_shot(0.1), report=False)
    probe = Probe(cb)
    learn = tiny_learner([cb, probe])
    if mp == 'to_fp16': learn.to_fp16()        # without CUDA fastai falls back to fp32 (with a warning)
    elif mp == 'cpu_fp16': learn.add_cb(CPUMixedPrecision())
    else: learn.add_cb(CPUMixedPrecision(amp_mode='bf16'))
    learn.fit_one_cycle(3, 3e-2)       # 36 steps, 32 of them with masks (CPU autocast is slow)
    assert probe.drift == 0 and masked_nonzero(cb.sparsifier) == 0
    assert cb.sparsifier.sparsity() == pytest.approx(0.8, abs=2e-3)
    assert learn.recorder.values[-1][2] > 0.5   # it trained

def test_gradient_accumulation():
    cb = PruneCallback(0.8, report=False)
    probe = Probe(cb)
    learn = tiny_learner([cb, probe, GradientAccumulation(n_acc=256)])
    learn.fit_one_cycle(2, 1e-2)
    assert probe.drift == 0 and cb.sparsifier.sparsity() == pytest.approx(0.8, abs=2e-3)

# ---------------------------------------------------------------- gradient criteria

def test_gradient_criterion_accumulates_only_while_needed():
    cb = PruneCallback(0.7, criterion=Taylor(), schedule=agp(0.1, 0.5), report=False)
    learn = tiny_learner(cb)
    cb.setup(learn)
    n = []
    orig = cb.sparsifier.update
    cb.sparsifier.update = lambda: (n.append(float(learn.pct_train)), orig())[1]
    learn.fit_one_cycle(2, 1e-2)
    assert cb.sparsifier.sparsity() == pytest.approx(0.7, abs=2e-3)
    assert n and n[0] == 0. and max(n) < 0.5 + 1/24   # no accumulation once the target is reached

# ---------------------------------------------------------------- fine_tune, consecutive fits, validation

def test_fine_tune_and_consecutive_fits():
    cb = PruneCallback(0.6, report=False)
    splitter = lambda m: [list(m[:3].parameters()), list(m[3:].parameters())]
    learn = tiny_learner(cb, splitter=splitter)
    sps = []
    learn.add_cb(Callback(before_fit=lambda _: sps.append(cb.sparsifier)))
    learn.fine_tune(1, 1e-2)
    assert len(sps) == 2 and sps[0] is sps[1]        # one Sparsifier for both phases
    assert cb.sparsifier.sparsity() == pytest.approx(0.6, abs=2e-3) and masked_nonzero(cb.sparsifier) == 0
    before = masks(cb.sparsifier)
    learn.fit_one_cycle(1, 1e-3)          # a later fit asks for less than reached early on: masks are kept
    learn.fit(1, 1e-3)
    assert sps[-1] is sps[0]
    for n, m in masks(cb.sparsifier).items(): assert torch.equal(m, before[n])
    assert masked_nonzero(cb.sparsifier) == 0

def test_validation_never_changes_masks(capsys):
    cb = PruneCallback(0.5, schedule=one_shot(0), soft=True)
    learn = tiny_learner(cb)
    learn.validate(); learn.get_preds()     # these run before_fit/after_fit too, but must not prune, print or compact
    assert cb.sparsifier.sparsity() == 0 and capsys.readouterr().out == ''
    learn.remove_cb(cb)                     # detached, so setting `summary` does not shadow `Learner.summary`
    cb.soft, cb.report = False, False
    learn.add_cb(cb)
    probe = Probe(cb)
    learn.fit_one_cycle(1, 1e-2, cbs=probe)   # Probe.after_validate asserts the masks did not move
    assert cb.sparsifier.sparsity() == pytest.approx(0.5, abs=2e-3)

def test_higher_target_in_new_callback_extends_masks():
    learn = tiny_learner()
    learn.fit_one_cycle(1, 1e-2, cbs=PruneCallback(0.5, report=False))
    first = {n: m.prune_mask.clone() for n, m in learn.model.named_modules() if hasattr(m, 'prune_mask')}
    cb = PruneCallback(0.8, report=False)
    learn.fit_one_cycle(1, 1e-2, cbs=cb)
    assert cb.sparsifier.sparsity() == pytest.approx(0.8, abs=2e-3)
    for n, m in cb.sparsifier.layers.items(): assert not (m.prune_mask & ~first[n]).any()   # never released

# ---------------------------------------------------------------- checkpoints

def test_resume_from_checkpoint_same_masks(tmp_path):
    "a run interrupted after epoch 1 and resumed from its checkpoint ends with the masks of an uninterrupted run"
    kw = dict(shuffle=False, path=tmp_path)
    full = PruneCallback(0.9, report=False)
    learn = tiny_learner(full, **kw)
    learn.fit_one_cycle(4, 1e-2, cbs=SaveModelCallback(every_epoch=True, with_opt=True))
    ref, ref_w = masks(full.sparsifier), {n: m.weight.detach().clone() for n, m in full.sparsifier.layers.items()}

    cb = PruneCallback(0.9, report=False)
    resumed = tiny_learner(cb, seed=1, **kw)   # other initial weights; `after_create` registered the buffers
    resumed.load('model_1')                     # end of epoch 1: masks, weights and optimizer state
    mid = cb.sparsifier.sparsity()
    assert 0 < mid < 0.9
    resumed.fit_one_cycle(4, 1e-2, start_epoch=2)
    for n, m in masks(cb.sparsifier).items(): assert torch.equal(m, ref[n]), n
    for n, m in cb.sparsifier.layers.items(): torch.testing.assert_close(m.weight, ref_w[n])

def test_load_needs_setup(tmp_path):
    learn = tiny_learner(PruneCallback(0.5, schedule=one_shot(0), report=False), path=tmp_path)
    learn.fit(1, 1e-2)
    learn.save('pruned')
    plain = tiny_learner(path=tmp_path, seed=1)
    with pytest.raises(RuntimeError, match='prune_mask'): plain.load('pruned')
    cb = PruneCallback(0.5, schedule=one_shot(0), report=False)
    plain.add_cb(cb); cb.setup()
    plain.load('pruned')
    assert cb.sparsifier.sparsity() == pytest.approx(0.5, abs=2e-3)

# ---------------------------------------------------------------- lottery ticket, soft pruning

def test_lottery_ticket_rewinds_survivors():
    cb = PruneCallback(0.8, schedule=iterative(2, end=0.5), report=False)
    learn = tiny_learner(cb)
    init = {n: m.weight.detach().clone() for n, m in learn.model.named_modules() if hasattr(m, 'weight') and m.weight is not None}
    ticket = LotteryTicket(epoch=0)
    learn.fit_one_cycle(2, 1e-2, cbs=ticket)
    for n, m in cb.sparsifier.layers.items(): assert torch.equal(m.weight, init[n]*m.prune_mask)
    before = masks(cb.sparsifier)
    learn.fit_one_cycle(2, 1e-2)
    for n, m in masks(cb.sparsifier).items(): assert torch.equal(m, before[n])
    assert masked_nonzero(cb.sparsifier) == 0

def test_soft_pruning_regrows_then_hardens():
    # start after an epoch: at initialisation BatchNorm shifts are 0, and a zeroed filter followed by BN and ReLU
    # then outputs ReLU(0) = 0 with no gradient, so it could not regrow
    cb = PruneCallback(0.5, granularity=Filter(), schedule=one_shot(0.3), soft=True, report=False)
    learn = tiny_learner(cb)
    seen = []
    learn.add_cb(Callback(after_train=lambda _: seen.append((masks(cb.sparsifier), masked_nonzero(cb.sparsifier)))))
    learn.fit_one_cycle(3, 1e-2)
    assert seen[0][1] == 0 and all(nz > 0 for _, nz in seen[1:])   # pruned filters kept training during each epoch
    assert len(cb.history) == 3 + 1                                 # recomputed at each epoch start, then final
    assert masked_nonzero(cb.sparsifier) == 0       # final masks are hard
    for u in cb.sparsifier.units: assert int(u.pruned().sum()) == round(0.5*u.n)

# ---------------------------------------------------------------- errors

@pytest.mark.parametrize('kw,err,msg', [
    (dict(sparsity=1.0), ValueError, r'\[0, 1\)'),
    (dict(sparsity=-0.1), ValueError, r'\[0, 1\)'),
    (dict(sparsity=float('nan')), ValueError, r'\[0, 1\)'),
    (dict(sparsity={'0.0': 1.5}), ValueError, r"sparsity\['0.0'\]"),
    (dict(sparsity={}), ValueError, 'empty'),
    (dict(sparsity=0.5, context='globl'), ValueError, 'local'),
    (dict(sparsity=0.5, schedule='agp'), TypeError, 'callable'),
    (dict(sparsity=0.5, schedule=lambda p: 2*p), ValueError, r'\[0, 1\]'),
    (dict(sparsity=0.5, schedule=lambda p: -p), ValueError, r'\[0, 1\]'),
    (dict(sparsity=0.5, criterion=Taylor(), schedule=one_shot(0)), ValueError, 'start the schedule later'),
    (dict(sparsity=0.5, criterion=Taylor(), schedule=linear(0, 1)), None, None),
    (dict(sparsity=0.5, criterion=Taylor(), schedule=one_shot(0.1), soft=True), ValueError, 'soft'),
    (dict(sparsity=0.5, criterion=BNScale()), ValueError, 'Filter'),
    (dict(sparsity=0.5, update_every=2), ValueError, 'update_every'),
    (dict(sparsity=0.5, exlude=['0.0']), TypeError, 'exlude'),
])
def test_errors_at_construction(kw, err, msg):
    if err is None: PruneCallback(**kw); return
    with pytest.raises(err, match=msg): PruneCallback(**kw)

@pytest.mark.parametrize('kw,msg', [(dict(sparsity={'nope': 0.5}), 'nope'), (dict(sparsity=0.5, layers=['nope']), 'nope'),
                                    (dict(sparsity=0.5, layer_types=(nn.LSTM,)), 'no prunable layer'),
                                    (dict(sparsity=0.5, granularity='2:4'), '2:4|NM|input')])
def test_errors_before_training(kw, msg):
    "what needs the model fails when the Learner is built (after_create) or at before_fit, before any batch"
    with pytest.raises(ValueError, match=msg): tiny_learner(PruneCallback(report=False, **kw))
    learn = tiny_learner()
    n = []
    with pytest.raises(ValueError, match=msg):
        learn.fit(1, cbs=[PruneCallback(report=False, **kw), Callback(before_batch=lambda _: n.append(1))])
    assert not n

# ---------------------------------------------------------------- distributed

@pytest.mark.slow
def test_ddp_identical_masks(tmp_path):
    "2 processes on gloo: every rank holds rank 0's masks after every step, even with a rank-dependent criterion"
    import torch.multiprocessing as mp
    sys.path.insert(0, os.path.dirname(__file__))
    from _ddp_worker import run_worker
    mp.spawn(run_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    res = [torch.load(tmp_path/f'rank{r}.pt') for r in range(2)]
    assert res[0]['checks'] > 20 and res[0]['checks'] == res[1]['checks']
    for n in res[0]['masks']: assert torch.equal(res[0]['masks'][n], res[1]['masks'][n])
    assert res[0]['sparsity'] == pytest.approx(0.8, abs=2e-3)

# ---------------------------------------------------------------- compaction at the end

def test_compact_at_end():
    pytest.importorskip('fastprune.compact')
    cb = PruneCallback(0.5, granularity=Filter(), schedule=one_shot(0.3), compact=True, report=False)
    learn = tiny_learner(cb)
    learn.fit_one_cycle(2, 1e-2)
    convs = [m for m in learn.model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8, 16]
    assert cb.sparsifier is None
    acc = learn.validate()[1]
    assert acc > 0.3

def test_lr_find_does_not_prune(tmp_path):
    cb = PruneCallback(0.5, schedule=one_shot(0), report=False)
    learn = tiny_learner(cb, path=tmp_path)   # lr_find saves and reloads the model under path/models
    learn.lr_find(num_it=20, show_plot=False)
    assert cb.sparsifier.sparsity() == 0
    learn.fit_one_cycle(1, 1e-2)
    assert cb.sparsifier.sparsity() == pytest.approx(0.5, abs=2e-3)
    assert learn.recorder.metric_names.count('sparsity') == 1

# ---------------------------------------------------------------- right by default (issue 11)

class TinyRes(nn.Module):
    "A stem and one residual block: the stem's channels and the block's last conv are coupled through the sum"
    def __init__(self, c=16):
        super().__init__()
        cb = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o))
        self.stem, self.conv1, self.conv2 = cb(1, c), cb(c, c), cb(c, c)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))
    def forward(self, x):
        x = torch.relu(self.stem(x))
        return self.head(torch.relu(x + self.conv2(torch.relu(self.conv1(x)))))

def test_structured_callback_couples_channels_by_itself():
    "No example_inputs: the callback traces a batch of learn.dls, so compact=True removes what was pruned on a residual net"
    cb = PruneCallback(0.5, granularity=Filter(), schedule=one_shot(0.3), compact=True, report=False)
    learn = tiny_learner(cb, model=TinyRes())
    assert len(cb.sparsifier.units) == 2 and len(cb.sparsifier.units[0].producers) == 2   # stem + conv2 share channels
    with warnings.catch_warnings():
        warnings.simplefilter('error', UserWarning)   # no "kept channels masked in some but not all layers"
        learn.fit_one_cycle(2, 1e-2)
    m = learn.model
    assert (m.stem[0].out_channels, m.conv1[0].out_channels, m.conv2[0].out_channels) == (8, 8, 8)

def test_global_filter_pruning_while_training_does_not_collapse():
    "Digits CNN 16/32/64, 50% global Filter() on AGP: every layer keeps >= 10% of its filters (raw scores: [1, 1, 54])"
    cb = PruneCallback(sparsity=0.5, granularity=Filter(), criterion=Magnitude(), context='global',
                       schedule=agp(start=0.1, end=0.7), report=False)
    learn = tiny_learner(cb, model=digits_cnn(widths=(16, 32, 64)), bs=64)
    learn.fit_one_cycle(6, 1e-2)
    alive = [int((~Filter().pruned_groups(m.prune_mask, m)).sum()) for m in cb.sparsifier.layers.values()]
    assert all(a >= 0.1 * m.out_channels for a, m in zip(alive, cb.sparsifier.layers.values())), alive
    assert sum(alive) == 112 - 56 + cb.sparsifier.shortfall
    assert learn.validate()[1] > 0.9

# ---------------------------------------------------------------- one vocabulary, no silent surprises (issue 12)

def test_lottery_ticket_attached_to_the_learner():
    "validate() before any fit does not raise; the ticket rewinds once, and retraining it is kept"
    cb, ticket = PruneCallback(0.8, schedule=iterative(2, end=0.5), report=False), LotteryTicket()
    learn = tiny_learner([cb, ticket])
    learn.validate()                                   # before_fit/after_fit without training: no rewind, no error
    learn.fit_one_cycle(2, 1e-2)                       # find the ticket: rewound at the end
    assert ticket.rewound
    rewound = {n: m.weight.detach().clone() for n, m in cb.sparsifier.layers.items()}
    learn.fit_one_cycle(3, 1e-2)                       # retrain the ticket: no second rewind
    shown = learn.recorder.values[-1][learn.recorder.metric_names[1:].index('accuracy')]
    acc = learn.validate()[1]
    assert any(not torch.equal(m.weight, rewound[n]) for n, m in cb.sparsifier.layers.items())
    assert acc == pytest.approx(shown) and acc > 0.5    # what the table showed, not a rewound model at chance level
    assert masked_nonzero(cb.sparsifier) == 0

def test_summary_is_deprecated_for_report():
    with pytest.warns(DeprecationWarning, match='report='):
        cb = PruneCallback(0.5, summary=False)
    assert cb.report is False
    learn = tiny_learner(PruneCallback(0.5, report=False))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        learn.prune.report = True                      # no "shadows Learner.summary" warning any more

def test_learner_checkpoint_loads_into_a_plain_model(tmp_path):
    "A learn.save of a pruned model (masks and optimizer state inside) loads into a plain model with the masks baked in"
    from fastprune.sparsifier import load_pruned
    cb = PruneCallback(0.7, report=False)
    learn = tiny_learner(cb, path=tmp_path)
    learn.fit_one_cycle(1, 1e-2)
    learn.save('pruned')                               # with_opt=True: {'model': ..., 'opt': ...}
    plain = digits_cnn(widths=(8, 16, 32))
    with pytest.raises(RuntimeError, match='prune_mask'): plain.load_state_dict(learn.model.state_dict())
    load_pruned(plain, tmp_path/'models'/'pruned.pth')
    assert not any('prune_mask' in k for k in plain.state_dict())
    x = learn.dls.valid.one_batch()[0]
    with torch.no_grad(): assert torch.equal(plain.eval()(x), learn.model.eval()(x))
    again = tiny_learner(PruneCallback(0.7, report=False))
    load_pruned(again.model, tmp_path/'models'/'pruned.pth')   # masks restored into the callback's buffers
    assert again.prune.sparsifier.sparsity() == pytest.approx(0.7, abs=2e-3)
