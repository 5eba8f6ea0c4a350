"""The evaluation loop and the eval sampler: exact counts, label subsets, groups, empty batches."""
from __future__ import annotations

import math

import pytest
import torch

from robustcnn.data.loader import EvalBatch
from robustcnn.data.samplers import ShardedEvalSampler
from robustcnn.engine.evaluate import SampleGroups, evaluate
from robustcnn.engine.runtime import init_runtime


class FixedLogits(torch.nn.Module):
    """Returns a stored logit row per sample (looked up by the first pixel value) so every number is known."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits[images[:, 0, 0, 0].long()]


def batch(rows: list[int], targets: list[int], num_failed: int = 0, failed: list[int] | None = None) -> EvalBatch:
    images = torch.zeros(len(rows), 1, 2, 2)
    images[:, 0, 0, 0] = torch.tensor(rows, dtype=torch.float32)
    return EvalBatch(images, torch.tensor(targets), torch.tensor(rows), num_failed,
                     torch.tensor(failed or [], dtype=torch.long))


@pytest.mark.parametrize('num_samples,world_size', [(0, 2), (1, 3), (10, 1), (11, 2), (101, 8)])
def test_sharded_sampler_covers_every_index_once(num_samples: int, world_size: int) -> None:
    dataset = list(range(num_samples))
    shards = [list(ShardedEvalSampler(dataset, world_size, rank)) for rank in range(world_size)]
    flat = sorted(index for shard in shards for index in shard)
    assert flat == dataset
    lengths = [len(shard) for shard in shards]
    assert max(lengths) - min(lengths) <= (1 if num_samples else 0)
    sampler = ShardedEvalSampler(dataset, world_size, 0)
    assert [sampler.shard_length(rank) for rank in range(world_size)] == lengths


def test_sampler_rejects_bad_rank() -> None:
    with pytest.raises(ValueError, match='rank'):
        ShardedEvalSampler([1, 2], num_replicas=2, rank=2)


def test_top1_top5_loss_are_exact() -> None:
    logits = torch.tensor([
        [5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0],  # predicts 0
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0],   # predicts 6; target 0 is last -> not in top-5
        [1.0, 9.0, 0.0, 0.0, 0.0, 0.0, 0.0],   # predicts 1
    ])
    model = FixedLogits(logits)
    runtime = init_runtime('cpu')
    result = evaluate(model, [batch([0, 1], [0, 0]), batch([2], [2])], runtime)
    # sample 0 right; sample 1 wrong (0 ranks 7th); sample 2: target 2 ties with 3..6 at 0.0 -> rank 3rd..7th
    expected_loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 0, 2]), reduction='mean').item()
    assert result.num_samples == 3
    assert result.top1 == pytest.approx(100 / 3)
    top5_row2 = int(2 in logits[2].topk(5).indices.tolist())
    assert result.top5 == pytest.approx(100 * (1 + top5_row2) / 3)
    assert result.loss == pytest.approx(expected_loss, rel=1e-6)
    assert result.skipped_files == 0


def test_label_subset_restricts_logits_and_targets() -> None:
    logits = torch.tensor([[0.0, 9.0, 5.0, 1.0, 4.0]])  # best overall: class 1; best in subset [2, 4]: class 2
    model = FixedLogits(logits)
    runtime = init_runtime('cpu')
    full = evaluate(model, [batch([0], [2])], runtime)
    subset = evaluate(model, [batch([0], [0])], runtime, label_subset=[2, 4])  # target = position 0 = class 2
    assert full.top1 == 0.0
    assert subset.top1 == 100.0
    expected = torch.nn.functional.cross_entropy(torch.tensor([[5.0, 4.0]]), torch.tensor([0])).item()
    assert subset.loss == pytest.approx(expected, rel=1e-6)
    assert subset.top5 == 100.0  # only 2 classes: top-k capped at the number of outputs


def test_empty_batches_and_groups() -> None:
    logits = torch.eye(4) * 3
    model = FixedLogits(logits)
    runtime = init_runtime('cpu')
    loader = [
        batch([0, 1], [0, 3]),                       # group 0: one right, one wrong
        EvalBatch(torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), 2,
                  torch.tensor([2, 4])),             # both files of this batch failed (groups 1 and 1)
        batch([3], [3]),                             # group 1: right
    ]
    updates = []
    result = evaluate(model, loader, runtime, sample_groups=SampleGroups([0, 0, 1, 1, 1], num_groups=2,
                                                                         on_update=updates.append, sync_every=1))
    assert result.num_samples == 3 and result.skipped_files == 2
    assert result.top1 == pytest.approx(200 / 3)
    assert result.groups.correct == [1, 1]
    assert result.groups.scored == [2, 1]
    assert result.groups.skipped == [0, 2]
    assert result.groups.finished([2, 3]) == [0, 1]
    # one update per batch, then the final one; group 0 is finished after the first batch
    assert len(updates) == 4
    assert updates[0].finished([2, 3]) == [0]


def test_uint8_batches_are_normalized_on_device_and_mode_restored() -> None:
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            seen['images'] = images.clone()
            return torch.zeros(images.shape[0], 3)

    model = Spy().train()
    images = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    batch = EvalBatch(images, torch.tensor([0]), torch.tensor([0]), 0, torch.empty(0, dtype=torch.long))
    evaluate(model, [batch], init_runtime('cpu'),
             normalization=((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
    assert torch.allclose(seen['images'], torch.full((1, 3, 2, 2), 2.0))
    assert model.training  # restored for the training loop


def test_nothing_scored_gives_nan_not_a_crash() -> None:
    empty = EvalBatch(torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), 1,
                      torch.tensor([0]))
    result = evaluate(FixedLogits(torch.eye(2)), [empty], init_runtime('cpu'))
    assert result.num_samples == 0 and result.skipped_files == 1 and math.isnan(result.top1)
