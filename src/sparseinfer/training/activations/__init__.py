"""Training dictionaries on language-model activations: config and presets, losses (AuxK, the study's), the
starting point, dead-latent resampling, the `fit` callbacks, and the runs themselves (from a store or on the fly)."""

from sparseinfer.training.activations.lm_config import LMTrainConfig, resolve, schedule
from sparseinfer.training.activations.presets import PRESETS, preset_settings
from sparseinfer.training.activations.train import load_run, train_from_store, train_on_activations, train_on_the_fly

__all__ = [
    "PRESETS",
    "LMTrainConfig",
    "load_run",
    "preset_settings",
    "resolve",
    "schedule",
    "train_from_store",
    "train_on_activations",
    "train_on_the_fly",
]
