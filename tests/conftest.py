"""Test-wide settings: the suite runs as two pytest-xdist workers on two cores, so each uses one torch thread."""

import torch

torch.set_num_threads(1)
