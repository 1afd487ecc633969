"""Ghost BatchNorm: each group normalised as a process holding only that group would normalise it."""

import pytest
import torch
from torch import nn

from mqreid.models import build_model
from mqreid.models.ghost_bn import GhostBatchNorm, convert_ghost_bn


@pytest.mark.parametrize("shape", [(8, 5), (8, 5, 3, 2)])
def test_groups_match_separate_batchnorms_and_running_stats_average(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape) * 3 + 1
    bn_cls = nn.BatchNorm1d if len(shape) == 2 else nn.BatchNorm2d
    ghost = convert_ghost_bn(nn.Sequential(bn_cls(5)), 4)[0]
    assert isinstance(ghost, GhostBatchNorm)
    out = ghost(x)
    separate = [bn_cls(5) for _ in range(2)]  # two "processes" with 4 images each
    ref = torch.cat([bn(part) for bn, part in zip(separate, x.split(4))])
    assert torch.equal(out, ref)
    assert torch.allclose(ghost.running_mean, (separate[0].running_mean + separate[1].running_mean) / 2)
    assert torch.allclose(ghost.running_var, (separate[0].running_var + separate[1].running_var) / 2)
    assert int(ghost.num_batches_tracked) == 1
    ghost.eval()
    plain = bn_cls(5)
    plain.load_state_dict(ghost.state_dict())
    plain.eval()
    assert torch.equal(ghost(x), plain(x))  # evaluation: running statistics, state dicts interchangeable


def test_gradients_match_and_bad_group_is_named():
    torch.manual_seed(1)
    x = torch.randn(6, 3, 4, 4, requires_grad=True)
    ghost = convert_ghost_bn(nn.BatchNorm2d(3), 3)
    ghost(x).pow(2).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    bn = nn.BatchNorm2d(3)
    torch.cat([bn(p) for p in x2.split(3)]).pow(2).sum().backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-6) and torch.allclose(ghost.weight.grad, bn.weight.grad, atol=1e-5)
    with pytest.raises(ValueError, match="train.bn_group=4 must divide the per-process batch of 6"):
        convert_ghost_bn(nn.BatchNorm2d(3), 4)(torch.randn(6, 3, 2, 2))


def test_convert_keeps_weights_frozen_flags_and_whole_model_output():
    torch.manual_seed(2)
    model = build_model("small_cnn", pretrained=False)
    ref = build_model("small_cnn", pretrained=False)
    ref.load_state_dict(model.state_dict())
    convert_ghost_bn(model, 2)
    n_ghost = sum(isinstance(m, GhostBatchNorm) for m in model.modules())
    assert n_ghost == sum(isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d) for m in ref.modules())
    assert not model.neck.bias.requires_grad  # the BN neck's frozen shift stays frozen
    x = torch.randn(4, 3, 32, 16)
    out = model.train()(x)
    expected = torch.cat([ref.train()(part) for part in x.split(2)])
    assert torch.allclose(out, expected, atol=1e-5)
    assert convert_ghost_bn(ref, None) is ref


def _spanning_worker(rank, world, port, x, out_dir):
    """One of ``world`` processes holding slice ``rank`` of ``x``; BN groups of 64 span them all (or pairs)."""
    import os

    import torch.distributed as dist

    from mqreid.engine.distributed import group_of_consecutive_ranks
    from mqreid.models.ghost_bn import set_process_group

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    per = x.shape[0] // world
    span = 32 // per  # groups of 32 images
    model = _net()
    set_process_group(model, group_of_consecutive_ranks(span), span)
    part = x[rank * per:(rank + 1) * per].clone().requires_grad_(True)
    out = model(part)
    # the loss of the global batch is the mean over ranks of each rank's loss: DDP's gradient averaging
    (out.pow(2).sum() * world / x.shape[0]).backward()
    grads = [p.grad for p in model.parameters()]
    for g in grads:
        dist.all_reduce(g)
        g /= world
    torch.save({"out": out.detach(), "x_grad": part.grad, "grads": grads,
                "running": [b for n, b in model.named_buffers() if "running" in n]},
               os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _net():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5))
    return convert_ghost_bn(net, 32).train()


@pytest.mark.slow
def test_groups_spanning_processes_equal_one_process(tmp_path):
    """4 processes x 16 images with BN groups of 32 (each group spread over two processes) compute the forward
    pass, the gradients and the running statistics of 1 process x 64 images."""
    import socket

    import torch.multiprocessing as mp

    torch.manual_seed(0)
    x = torch.randn(64, 3, 8, 6) * 2 + 0.5
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_spanning_worker, args=(4, port, x, str(tmp_path)), nprocs=4, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(4)]
    model = _net()
    x1 = x.clone().requires_grad_(True)
    out = model(x1)
    out.pow(2).sum().div(x.shape[0]).backward()
    assert torch.allclose(torch.cat([r["out"] for r in ranks]), out.detach(), atol=1e-5)
    # each rank's input gradient is that of the sum of the ranks' losses (the statistics' all-reduce sums
    # the gradients in backward); DDP's averaging of the parameter gradients divides by the world size
    assert torch.allclose(torch.cat([r["x_grad"] for r in ranks]) / 4, x1.grad, atol=1e-7)
    for got, ref in zip(ranks[0]["grads"], [p.grad for p in model.parameters()]):
        assert torch.allclose(got, ref, atol=1e-5)
    ref_running = [b for n, b in model.named_buffers() if "running" in n]
    for j, ref in enumerate(ref_running):  # ranks of one group agree; the mean over groups is one process's
        mean = torch.stack([r["running"][j] for r in ranks]).mean(0)
        assert torch.allclose(mean, ref, atol=1e-6)
        assert torch.allclose(ranks[0]["running"][j], ranks[1]["running"][j])


@pytest.mark.parametrize("layout", ["channels_last", "bf16"])
def test_groups_match_one_batchnorm_per_group_in_every_layout(layout):
    """The in-process groups equal one BatchNorm call per group, forward and backward, in channels_last and
    under bfloat16 autocast too."""
    torch.manual_seed(3)
    x = torch.randn(8, 4, 5, 3) * 2 + 1
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    ghost, ref = convert_ghost_bn(nn.BatchNorm2d(4), 4), nn.BatchNorm2d(4)
    ref.load_state_dict(ghost.state_dict())
    context = torch.autocast("cpu", dtype=torch.bfloat16) if layout == "bf16" else torch.autocast("cpu", enabled=False)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    with context:
        inputs = [v.to(torch.bfloat16) if layout == "bf16" else v for v in xs]
        out = ghost(inputs[0])
        separate = []
        for part in inputs[1].split(4):
            bn = nn.BatchNorm2d(4)
            bn.load_state_dict(ref.state_dict())
            separate.append(bn)
        expected = torch.cat([bn(part) for bn, part in zip(separate, inputs[1].split(4))])
    assert out.dtype == expected.dtype and torch.equal(out, expected)
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)
    out.float().pow(2).sum().backward()
    expected.float().pow(2).sum().backward()
    assert torch.equal(xs[0].grad, xs[1].grad)
    assert torch.allclose(ghost.weight.grad, sum(bn.weight.grad for bn in separate), atol=1e-5)
    assert torch.allclose(ghost.running_var, sum(bn.running_var for bn in separate) / 2)


def test_groups_spanning_nccl_processes_become_sync_batchnorm(monkeypatch):
    """Over NCCL, a BatchNorm group spread over processes is torch's SyncBatchNorm over that group's ranks,
    with the layer's parameters, buffers and frozen flags (gloo keeps the autograd version; the GPU check runs
    the NCCL kernels)."""
    from mqreid.models import ghost_bn

    model = convert_ghost_bn(build_model("small_cnn", pretrained=False), 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    monkeypatch.setattr(ghost_bn, "_backend", lambda group: "gloo")
    ghost_bn.set_process_group(model, "block", 2)
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert all(isinstance(m, GhostBatchNorm) and m.group_ranks == 2 and m.process_group == "block" for m in layers)
    monkeypatch.setattr(ghost_bn, "_backend", lambda group: "nccl")
    assert ghost_bn.set_process_group(model, "block", 2) is model
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert layers and all(type(m) is nn.SyncBatchNorm and m.process_group == "block" for m in layers)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.neck.bias.requires_grad  # the BN neck's frozen shift stays frozen
