"""Per-device BatchNorm under SPMD (DeviceGroupBatchNorm2d) on plain CPU tensors: no torch_xla needed.

Under SPMD one program sees the global batch; the release normalized each chip's slice on its own. The grouped
layer must give exactly what separate BatchNorms on the slices give, and stay a BatchNorm2d for checkpoints.
"""
from __future__ import annotations

import copy

import torch

from robustcnn.engine.runtime import DeviceGroupBatchNorm2d, Runtime, group_batchnorm_by_device


def test_grouped_batchnorm_equals_batchnorm_on_each_slice():
    torch.manual_seed(0)
    plain = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5)
        plain.bias.uniform_(-0.5, 0.5)
    grouped = group_batchnorm_by_device(torch.nn.Sequential(copy.deepcopy(plain)), num_groups=2)[0]
    assert isinstance(grouped, DeviceGroupBatchNorm2d) and isinstance(grouped, torch.nn.BatchNorm2d)
    images = torch.randn(8, 3, 5, 5) * 3 + 1
    output = grouped(images)
    slices = [copy.deepcopy(plain), copy.deepcopy(plain)]
    expected = torch.cat([norm(part) for norm, part in zip(slices, images.chunk(2))])
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-5)
    # running statistics: the mean of what each slice's BatchNorm would have recorded
    torch.testing.assert_close(grouped.running_mean, (slices[0].running_mean + slices[1].running_mean) / 2)
    torch.testing.assert_close(grouped.running_var, (slices[0].running_var + slices[1].running_var) / 2)
    assert int(grouped.num_batches_tracked) == 1
    # evaluation and the state dict are BatchNorm2d's
    grouped.eval()
    reference = copy.deepcopy(plain)
    reference.load_state_dict(grouped.state_dict())
    reference.eval()
    torch.testing.assert_close(grouped(images), reference(images))
    assert set(grouped.state_dict()) == set(plain.state_dict())


def test_gradients_flow_through_grouped_batchnorm():
    norm = group_batchnorm_by_device(torch.nn.Sequential(torch.nn.BatchNorm2d(2)), num_groups=2)[0]
    images = torch.randn(4, 2, 3, 3, requires_grad=True)
    (norm(images) * torch.arange(4.0).view(4, 1, 1, 1)).sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert norm.weight.grad is not None and norm.bias.grad is not None


def test_cpu_runtime_keeps_its_behaviour():
    runtime = Runtime(kind='cpu', device=torch.device('cpu'))
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(2))
    assert runtime.configure_batchnorm(model, sync_bn=False) is model
    assert type(model[0]) is torch.nn.BatchNorm2d
    assert runtime.data_parallel_size == 1 and runtime.process_batch_size(16) == 16
    assert runtime.global_count(5) == 5 and not runtime.distributed
    loader = [1, 2]
    assert runtime.eval_batches(loader) is loader
    images, targets = torch.zeros(2, 3, 4, 4), torch.tensor([0, 1])
    moved = runtime.prepare_batch(images, targets, transform=lambda x, y: (x + 1, y))
    assert torch.equal(moved[0], images + 1) and torch.equal(moved[1], targets)
    state = {'a': [torch.ones(1)]}
    assert runtime.host_state(state) is state
