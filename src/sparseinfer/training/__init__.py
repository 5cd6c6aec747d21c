"""Training: one loop (`fit`) over (encoder, dictionary, data, regime), the regimes, and FLOP bookkeeping."""

from sparseinfer.training.config import TrainConfig
from sparseinfer.training.evaluate import evaluate_synthetic, score_codes
from sparseinfer.training.fit import fit
from sparseinfer.training.regimes import REGIMES, Regime, get_regime
from sparseinfer.training.sparse_coding import CodeTable, code_table_for

__all__ = [
    "REGIMES",
    "CodeTable",
    "Regime",
    "TrainConfig",
    "code_table_for",
    "evaluate_synthetic",
    "fit",
    "get_regime",
    "score_codes",
]
