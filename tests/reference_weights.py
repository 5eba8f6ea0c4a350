"""Deterministic, RNG-free weights and inputs, shared by the reference-output test and the script that made the
reference numbers with the original implementation (tests/data/original_outputs.json)."""
import math

import torch


def deterministic_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Fill every tensor from a sine pattern (same on every torch version and platform)."""
    state = {}
    for index, (key, tensor) in enumerate(model.state_dict().items()):
        if key.endswith('num_batches_tracked'):
            state[key] = tensor.clone()
            continue
        pattern = torch.sin(torch.arange(tensor.numel(), dtype=torch.float64) * 0.37 + index)
        if key.endswith('running_var'):
            values = 1.0 + 0.5 * pattern ** 2
        elif key.endswith('running_mean') or key.endswith('bias'):
            values = 0.1 * pattern
        elif tensor.ndim == 1:  # BN weight, layer scale
            values = 1.0 + 0.2 * pattern
        else:
            fan_in = tensor[0].numel()
            values = pattern * math.sqrt(1.0 / fan_in)
        state[key] = values.reshape(tensor.shape).to(tensor.dtype)
    return state


def deterministic_input(size: int = 64) -> torch.Tensor:
    values = torch.cos(torch.arange(3 * size * size, dtype=torch.float64) * 0.013)
    return values.reshape(1, 3, size, size).float()
