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
