"Tests of fastprune.regularize: the penalties by hand, loss and subgradient modes agree, an unused channel goes to 0, until, errors"
import copy, types
import pytest, torch
from torch import nn
from hypothesis import given, settings, strategies as st
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.optimizer import SGD
from fastai.callback.core import Callback, CancelFitException
from fastai.callback.progress import ProgressCallback
from fastai.callback.schedule import lr_find
from fastai.torch_core import set_seed
from torch.utils.data import TensorDataset
from fastprune.granularity import Filter
from fastprune.regularize import *
from fastprune.regularize import _add_subgradient, _loss_scale
from fastprune.callback import PruneCallback
from fastprune.schedules import one_shot
from fastprune.data import digits_cnn, digits_dls, digits_learner

class FirstChannels(nn.Module):
    "Spatial mean of the first `k` channels: the others are computed but never used"
    def __init__(self, k=1): super().__init__(); self.k = k
    def forward(self, x): return x[:, :self.k].mean((2, 3)).sum(1, keepdim=True)

def toy_learner(cbs=None, seed=0, n_ch=2, bn=True):
    set_seed(seed)
    x = torch.randn(256, 1, 4, 4)
    y = x.sum((1, 2, 3))[:, None].relu() / 4
    dls = DataLoaders.from_dsets(TensorDataset(x[:192], y[:192]), TensorDataset(x[192:], y[192:]), bs=32)
    net = nn.Sequential(nn.Conv2d(1, n_ch, 3, padding=1), *([nn.BatchNorm2d(n_ch)] if bn else []), nn.ReLU(), FirstChannels())
    learn = Learner(dls, net, nn.MSELoss(), opt_func=SGD, lr=0.2, wd=0., cbs=cbs)
    learn.remove_cb(ProgressCallback)
    return learn

def fit(learn, n):
    with learn.no_logging(): learn.fit(n)
    return learn

@pytest.mark.parametrize('seed', [0, 1, 2])
def test_slimming_drives_an_unused_channel_to_zero(seed):
    plain = fit(toy_learner(seed=seed, n_ch=3), 12).model[1].weight.detach().abs()
    slim = fit(toy_learner(SparsityRegularizer('slimming', lam=0.1), seed=seed, n_ch=3), 12).model[1].weight.detach().abs()
    assert (plain[1:] == 1).all()                        # no gradient, no weight decay: untouched
    assert (slim[1:] <= 0.2 * 0.1).all(), slim           # within one SGD step (lr * lam) of 0
    assert slim[0] > 0.3, slim                           # the used channel is held up by the data

def test_group_lasso_drives_an_unused_filter_to_zero():
    learn = fit(toy_learner(SparsityRegularizer('group-lasso', lam=0.1, layers=['0']), bn=False), 20)
    norms = learn.model[0].weight.detach().flatten(1).norm(dim=1)
    assert norms[1] < 0.05 < 0.3 < norms[0], norms

class Grab(Callback):
    "Keep the gradients of the first training batch and stop"
    order = 20
    def before_step(self):
        self.grads = [p.grad.clone() for p in self.learn.model.parameters()]
        raise CancelFitException()

def batch_grads(cb, seed=0):
    "Gradients of every parameter of a seeded digits CNN after one training batch with callback `cb`"
    torch.manual_seed(seed)
    learn = digits_learner(digits_cnn(), digits_dls(bs=32), cbs=[g := Grab()] + ([cb] if cb else []))
    learn.remove_cb(ProgressCallback)
    with learn.no_logging(): learn.fit(1)
    return g.grads

@pytest.mark.parametrize('method', ['slimming', 'group-lasso'])
def test_loss_and_grad_modes_give_the_same_gradients(method):
    none = batch_grads(None)
    loss = batch_grads(SparsityRegularizer(method, lam=1e-2))
    grad = batch_grads(SparsityRegularizer(method, lam=1e-2, apply='grad'))
    changed = 0
    for a, b, c in zip(none, loss, grad):
        torch.testing.assert_close(b, c, atol=1e-6, rtol=1e-5)
        changed += not torch.allclose(a, b)
    assert changed == 3   # the three BatchNorm scales / the three conv weights (the classifier is not penalised)

@settings(max_examples=25)
@given(st.integers(0, 2**31 - 1), st.sampled_from(['conv', 'grouped', 'convT', 'linear']))
def test_group_lasso_matches_filter_norms_by_hand(seed, kind):
    "the penalty sums the filters' L2 norms; the subgradient equals autograd's gradient, 0 (not NaN) for a zero filter"
    torch.manual_seed(seed)
    m = {'conv': lambda: nn.Conv2d(4, 6, 3), 'grouped': lambda: nn.Conv2d(4, 6, 3, groups=2),
         'convT': lambda: nn.ConvTranspose2d(4, 6, 3, groups=2), 'linear': lambda: nn.Linear(4, 6)}[kind]()
    # filter o of a grouped ConvTranspose (weight: in, out/groups, k, k) is w[2g:2g+2, o % 3] with g = o // 3
    filt = (lambda w: torch.stack([w[2 * (o // 3):2 * (o // 3) + 2, o % 3].flatten() for o in range(6)])) if kind == 'convT' else \
           (lambda w: w.reshape(6, -1))
    with torch.no_grad():
        if kind == 'convT': m.weight[0:2, 0] = 0
        else: m.weight[0] = 0
    w = m.weight.detach()
    assert filt(w)[0].abs().sum() == 0
    torch.testing.assert_close(sparsity_penalty([m], 'group-lasso'), filt(w).norm(dim=1).sum())
    m.weight.grad = None
    sparsity_penalty([m], 'group-lasso').backward()
    auto = m.weight.grad.clone()
    m.weight.grad = None
    _add_subgradient([m], 'group-lasso', 1.)
    assert torch.isfinite(m.weight.grad).all() and filt(m.weight.grad)[0].abs().sum() == 0
    torch.testing.assert_close(m.weight.grad, auto)

def test_penalty_column_and_train_loss():
    learn = toy_learner(SparsityRegularizer('slimming', lam=1e-2))
    fit(learn, 1)
    names = learn.recorder.metric_names
    assert 'penalty' in names
    pen = learn.recorder.values[-1][names.index('penalty') - 1]
    assert pen == pytest.approx(1e-2 * float(learn.model[1].weight.detach().abs().sum()), rel=1e-5)
    assert 'penalty' not in [getattr(m, 'name', '') for m in learn.metrics]

def test_until_fraction_and_prune():
    class Record(Callback):
        order = 20
        def before_fit(self): self.active = []
        def after_loss(self):
            if self.training: self.active.append(self.learn.sparsity_regularizer._active())
    rec = Record()
    learn = fit(toy_learner([SparsityRegularizer('slimming', lam=1e-2, until=0.25), rec]), 4)  # 24 batches
    assert rec.active == [True] * 6 + [False] * 18
    learn = fit(toy_learner([SparsityRegularizer('slimming', lam=1e-2, until='prune'), rec,
                             PruneCallback(0.5, 'filter', 'bnscale', schedule=one_shot(0.75), keep_classifier=True, report=False)]), 4)
    assert rec.active == [True] * 18 + [False] * 6
    with pytest.raises(ValueError, match='prunes from the start of training'):
        fit(toy_learner([SparsityRegularizer(until='prune'), PruneCallback(0.5, keep_classifier=True, report=False)]), 1)
    with pytest.raises(ValueError, match='needs a PruneCallback'): fit(toy_learner(SparsityRegularizer(until='prune')), 1)

def test_lr_find_is_not_regularised():
    learn = toy_learner(SparsityRegularizer('slimming', lam=10.))
    before = learn.model[1].weight.detach().clone()
    with learn.no_logging(): learn.lr_find(num_it=10, show_plot=False)
    torch.testing.assert_close(learn.model[1].weight.detach(), before)   # lr_find restores the model anyway
    assert 'penalty' not in [getattr(m, 'name', '') for m in learn.metrics]

def test_loss_scale():
    assert _loss_scale(types.SimpleNamespace()) == 1.
    scaler = types.SimpleNamespace(get_scale=lambda: 512., is_enabled=lambda: True)
    assert _loss_scale(types.SimpleNamespace(scaler=scaler)) == 512.

def test_penalty_layers_and_errors():
    cnn = digits_cnn()
    assert list(penalty_layers(cnn)) == ['0.1', '1.1', '2.1']
    assert list(penalty_layers(cnn, 'group_lasso')) == ['0.0', '1.0', '2.0']
    assert list(penalty_layers(cnn, layers=[cnn[1]])) == ['1.1']
    no_affine = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, affine=False), nn.Linear(2, 2))
    with pytest.raises(ValueError, match="no BatchNorm with a learnable scale: use method='group-lasso'"): penalty_layers(no_affine)
    with pytest.raises(ValueError, match='network slimming'): penalty_layers(cnn, layers=['nope'])
    for kw, msg in (({'method': 'l1'}, 'method must be one of'), ({'lam': -1.}, 'lam must be a positive'),
                    ({'lam': float('nan')}, 'lam must be a positive'), ({'until': 0}, 'until must be'),
                    ({'until': 'start'}, 'until must be'), ({'apply': 'step'}, "apply must be 'loss' or 'grad'")):
        with pytest.raises(ValueError, match=msg): SparsityRegularizer(**kw)
    assert repr(SparsityRegularizer('group_lasso', 1e-3, until='prune')) == "SparsityRegularizer('group-lasso', lam=0.001, until='prune')"
    assert SparsityRegularizer.methods == REGULARIZERS == ('slimming', 'group-lasso')
