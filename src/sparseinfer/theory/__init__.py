"""The theory the study rests on, made numerical: the recovery boundary M = 2 K ln(N / K), the Donoho-Tanner phase
transition of L1 recovery (from the statistical dimension) with its empirical counterpart, and the rank argument
that a ReLU(W x) encoder cannot invert an overcomplete dictionary even on 1- and 2-sparse codes."""

from sparseinfer.theory.boundary import boundary_rho, is_above_boundary, recovery_boundary
from sparseinfer.theory.phase_transition import (
    basis_pursuit,
    empirical_transition,
    statistical_dimension,
    transition_crossings,
    transition_rho,
)
from sparseinfer.theory.rank import RankCheck, probe_codes, rank_check, sparse_max_error

__all__ = [
    "RankCheck",
    "basis_pursuit",
    "boundary_rho",
    "empirical_transition",
    "is_above_boundary",
    "probe_codes",
    "rank_check",
    "recovery_boundary",
    "sparse_max_error",
    "statistical_dimension",
    "transition_crossings",
    "transition_rho",
]
