"""LSTM regressor: stacked LSTM layers, then a Linear head on the last time step's hidden state.

The ECCO-DNN reference's household-power model is 2 x LSTM(200) + Linear, trained with MSE; that is the
default here. `agd_compatible=True` drops every bias (LSTM gate biases and the head's), leaving the 2-D
input-to-hidden and hidden-to-hidden matrices and the head's weight.
"""

from __future__ import annotations

import torch
from torch import nn


class LSTMRegressor(nn.Module):
    """x (batch, time, input_size) -> (batch, output_size); a 2-D x (batch, input_size) is one time step.

    Args:
        input_size: features per time step.
        hidden_size: units per LSTM layer (reference: 200).
        num_layers: stacked LSTM layers (reference: 2).
        output_size: values predicted per sequence.
        agd_compatible: no biases (only >= 2-D parameters), as AGD needs.
    """

    def __init__(self, input_size: int, hidden_size: int = 200, num_layers: int = 2, output_size: int = 1,
                 agd_compatible: bool = False) -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers),
                            ("output_size", output_size)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.agd_compatible = agd_compatible
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers, bias=not agd_compatible, batch_first=True)
        self.head = nn.Linear(hidden_size, output_size, bias=not agd_compatible)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        out, _ = self.lstm(x)  # (batch, time, hidden)
        return self.head(out[:, -1])
