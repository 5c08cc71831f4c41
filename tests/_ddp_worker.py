"Worker for tests/test_callback.py::test_ddp_identical_masks (one process per rank, gloo backend, CPU)"
import os, warnings
import torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from fastai.callback.all import *
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastprune.data import digits_dls, digits_cnn
from fastprune.criteria import Random
from fastprune.schedules import agp
from fastprune.callback import PruneCallback

class MaskCheck(Callback):
    "After every optimizer step, compare this rank's masks with rank 0's (all_gather) and count the checks"
    order = PruneCallback.order + 1
    def __init__(self, cb): self.cb, self.checks = cb, 0
    def _check(self):
        flat = torch.cat([m.prune_mask.reshape(-1) for m in self.cb.sparsifier.layers.values()]).to(torch.uint8)
        got = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
        dist.all_gather(got, flat)
        assert all(torch.equal(g, got[0]) for g in got), f"rank {dist.get_rank()}: masks differ at pct_train={self.learn.pct_train}"
        self.checks += 1
    def after_step(self): self._check()
    def after_fit(self): self._check()

def run_worker(rank, world, out):
    warnings.filterwarnings('ignore')
    # a FileStore rendezvous: no TCP port to race for and no store-server thread in rank 0 to tear down at exit
    dist.init_process_group('gloo', init_method=f'file://{out}/rendezvous', rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        torch.manual_seed(0)                       # same initial weights on every rank
        model = DDP(digits_cnn(widths=(8, 16, 32)), broadcast_buffers=False)
        dls = digits_dls(bs=128, seed=rank)        # rank-dependent data order
        for dl in dls.loaders: dl.fake_l.num_workers = 0   # no DataLoader worker processes inside the spawned ranks
        # a rank-dependent criterion: without the Sparsifier's broadcast from rank 0 the masks would differ
        cb = PruneCallback(0.8, criterion=Random(seed=rank), schedule=agp(0, 0.7), update_every=0, report=False)
        check = MaskCheck(cb)
        learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), cbs=[cb, check])
        learn.remove_cb(ProgressCallback)
        learn.logger = lambda *a, **k: None
        learn.fit_one_cycle(2, 1e-2)
        torch.save({'checks': check.checks, 'sparsity': cb.sparsifier.sparsity(),
                    'masks': {n: m.prune_mask.clone() for n, m in cb.sparsifier.layers.items()}}, f'{out}/rank{rank}.pt')
        dist.barrier()                             # nobody tears the group down while the other rank still talks to it
    finally: dist.destroy_process_group()
