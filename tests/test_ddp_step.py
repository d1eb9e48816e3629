"""The GAN step under DDP as the launcher wraps it (`loop.DDP_OPTIONS`), on two real ranks.

Two processes (gloo over a FileStore, one thread each) wrap G and D in
`DistributedDataParallel(**DDP_OPTIONS)` and train one epoch of the default recipe (a
conditional DCGAN with BatchNorm, mode seeking, the EMA on rank 0) on disjoint halves of
sklearn digits. No forward may broadcast buffers (DDP's default does at three of the step's four
forwards, a collective that waits for the slower rank: the same epoch under torch's default
options is the counter's control), and every weight must still be the same on both ranks after
training: their gradients are all-reduced.
"""

from __future__ import annotations

import multiprocessing as mp
import traceback
from pathlib import Path

import numpy as np
import torch
from ranks import run_two_ranks

STEPS = 6


def _rank_main(rank: int, store_file: str, default_ddp: bool, out: mp.Queue) -> None:
    try:
        import numpy as np
        import torch.distributed as dist
        from sklearn.datasets import load_digits
        from torch.nn.parallel import DistributedDataParallel

        from pipeline.models import build_models, unwrap
        from pipeline.train.data import DeviceArrays
        from pipeline.train.ema import GeneratorEMA
        from pipeline.train.loop import DDP_OPTIONS, run_epoch

        torch.set_num_threads(1)
        dist.init_process_group("gloo", store=dist.FileStore(store_file, 2), rank=rank,
                                world_size=2)
        d = load_digits()
        images = np.round(d.images * 255 / 16).astype(np.uint8).repeat(2, 1).repeat(2, 2)
        images = np.pad(images, ((0, 0), (6, 6), (6, 6)))[..., None]  # (N, 28, 28, 1)
        torch.manual_seed(0)
        G, D = build_models({"latent_dim": 8, "g_features": 8, "d_features": 8,
                             "conditional": True, "embed_dim": 4,
                             "d_conditioning": "projection"}, (1, 28, 28), 10)
        options = {} if default_ddp else DDP_OPTIONS  # torch's defaults: the counter's control
        G, D = DistributedDataParallel(G, **options), DistributedDataParallel(D, **options)
        broadcasts = {"n": 0}  # DDP's buffer broadcasts after wrapping (the init sync is before)
        real_broadcast = DistributedDataParallel._distributed_broadcast_coalesced

        def counted(self: DistributedDataParallel, *args: object, **kwargs: object) -> object:
            broadcasts["n"] += 1
            return real_broadcast(self, *args, **kwargs)

        DistributedDataParallel._distributed_broadcast_coalesced = counted  # type: ignore[method-assign]
        ema = GeneratorEMA(unwrap(G), 0.9) if rank == 0 else None
        opt_g = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(D.parameters(), lr=2e-3, betas=(0.5, 0.999))
        data = DeviceArrays.on(torch.device("cpu"), images, d.target)
        indices = list(range(rank, 2 * 16 * STEPS, 2))  # each rank its own half
        stats, _ = run_epoch(G, D, opt_g, opt_d, data.batches(indices, 16), epoch=1,
                             latent_dim=8, num_classes=10,
                             noise=torch.Generator().manual_seed(rank),
                             device=torch.device("cpu"), ema=ema, mode_seeking=1.0)

        def weights(module: torch.nn.Module) -> dict[str, np.ndarray]:
            return {name: t.detach().numpy().copy()  # plain arrays: no shared memory to outlive
                    for name, t in module.named_parameters()}

        out.put((rank, "ok", {**stats, "broadcasts": broadcasts["n"]},
                 {m: weights(unwrap(net)) for m, net in (("G", G), ("D", D))}))
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - reported to the test process
        out.put((rank, "crash", traceback.format_exc(), {}))


def test_ddp_step_broadcasts_no_buffers_and_keeps_one_set_of_weights(tmp_path: Path) -> None:
    # The counter's control: with DDP's default options the same epoch broadcasts buffers.
    control = run_two_ranks(_rank_main, tmp_path / "store-default", True)
    assert control[0][0] == "ok", control[0][1]
    assert control[0][1]["broadcasts"] >= STEPS
    results = run_two_ranks(_rank_main, tmp_path / "store", False)
    for rank in (0, 1):
        assert results[rank][0] == "ok", results[rank][1]
        stats = results[rank][1]
        assert stats["steps"] == STEPS
        assert stats["broadcasts"] == 0
        assert all(torch.isfinite(torch.tensor(stats[k])) for k in ("loss_d", "loss_g"))
    for m in ("G", "D"):
        params0, params1 = (results[r][2][m] for r in (0, 1))
        assert params0.keys() == params1.keys() and params0
        for name, p0 in params0.items():
            np.testing.assert_allclose(p0, params1[name], rtol=0, atol=1e-6, err_msg=name)
