"""Scales of the study's language-model experiment (`sparseinfer reproduce llm`), as frozen presets.

- `micro`: seconds, for tests (a tiny model and text given by the caller).
- `quick`: the whole pipeline, auto-interp included, meant for 60 minutes on 2 CPU cores (measured: 56.3): >= 1M
  training and >= 100k held-out tokens of the default model at resid_pre.9 on the varied English corpus, a 4x
  dictionary, 300 training steps, 50-iteration solvers, 2,048 evaluation tokens, 50 latents per family scored by 8
  detection and 2 fuzzing questions on two single-threaded explainer servers; training and evaluation on 2
  single-threaded worker processes.
- `study`: the study's settings (22x expansion, 128-token contexts, the study loss; ../shared/paper-protocol.md) on
  one GPU; on CPU it streams and chunks so as to stay within 24 GB of RAM (shards of 64 contexts, 4 in memory).

Every learned dictionary is trained at each target L0 (TopK by k = target; the L1-trained ones by the training
config's `target_l0` when it has one, else by the preset's L1 weight) and evaluated with every method calibrated to
its target (see `evaluation.calibrate`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from sparseinfer.errors import SparseInferError
from sparseinfer.lm.model import DEFAULT_MODEL

FAMILIES = ("relu", "topk", "mlp", "sparse_coding")  # ReLU+L1 SAE, TopK SAE, the study's MLP encoder, sparse coding
METHODS = ("own", "ito", "fista", "omp")  # per dictionary: its own encoder, ITO from it, FISTA, OMP at k = target


@dataclass(frozen=True)
class LLMPreset:
    """Every setting of one scale of the study; `config.yaml` records it resolved."""

    name: str
    model: str = DEFAULT_MODEL
    hook: str = "resid_pre.9"
    text: str = "english"
    context_length: int = 128
    train_contexts: int = 8_192  # x 127 usable tokens each (BOS dropped)
    test_contexts: int = 800
    contexts_per_shard: int = 64
    harvest_batch: int = 16
    dtype: str = "float16"  # on disk
    compute_dtype: str = "bfloat16"  # the harvest's forward pass: 3.7x faster per CPU-second with AMX (docs/lm.md)
    harvest_threads: int | None = 1  # one torch thread ran ~2x faster than two on the shared 2-core machine
    expansion: int = 4
    targets: tuple[int, ...] = (16, 64)
    families: tuple[str, ...] = FAMILIES
    methods: tuple[str, ...] = METHODS
    steps: int = 600
    sparse_coding_steps: int = 150
    batch_size: int = 1024
    lr: float = 1e-3
    loss: str = "sae"
    l1: dict[int, float] = field(default_factory=lambda: {16: 8.0, 64: 3.0})  # used without `target_l0` training
    sparse_coding_iter: int = 30  # Adam steps on the codes per batch while training (the study: 100)
    # the sparse-coding penalty each target starts from (then adapted by the target-L0 controller): from the default
    # 0.01, a 100-step run on 20k tokens of this corpus climbed to 9.4 (target 16) and 4.0 (target 64) and was still
    # too dense at the end (L0 62 and 156), so start near half of those
    sparse_coding_penalty: dict[int, float] = field(default_factory=lambda: {16: 5.0, 64: 2.0})
    eval_tokens: int = 4_096
    eval_contexts: int = 16  # held-out contexts for CE / KL
    calibration_tokens: int = 512
    workers: int = 1  # training runs and evaluate rows computed at once, by single-threaded processes (row_workers)
    solver_iter: int = 100  # FISTA / ITO iterations at evaluation
    interp_target: int = 64  # the dictionaries whose latents are explained (one per family)
    interp_latents: int = 50
    interp_min_count: int = 10
    interp_options: dict[str, Any] = field(default_factory=dict)  # more `InterpretConfig` fields (windows, scorers)
    # "family:method" pairs also explained at `interp_target`, with the evaluate stage's calibrated encoder (e.g.
    # "topk:ito": ITO codes of the TopK dictionary, scored on the same latents as its own encoder, paired)
    interp_methods: tuple[str, ...] = ()
    explainer: str = "qwen2.5-coder-1.5b"  # a name of interp.models (fetched on first use) or a .gguf path
    llm_threads: int = 1  # per server: a 2-thread llama.cpp server slowed ~4x per question beside another process
    llm_servers: int = 2  # servers (or parallel requests to --llm-url), one latent each at a time
    seed: int = 0
    device: str = "cpu"
    expected: str = ""

    def settings(self) -> dict[str, Any]:
        """The preset as plain values (tuples as lists) for config.yaml."""
        out = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


PRESETS: dict[str, LLMPreset] = {
    "micro": LLMPreset(
        name="micro", text="shakespeare", context_length=16, train_contexts=48, test_contexts=16,
        contexts_per_shard=16, dtype="float32", compute_dtype="float32", harvest_threads=None, expansion=2,
        targets=(2, 4), steps=20, sparse_coding_steps=5,
        batch_size=64, l1={2: 8.0, 4: 3.0}, sparse_coding_iter=5, eval_tokens=128, eval_contexts=2,
        calibration_tokens=64, solver_iter=20, interp_target=4, interp_latents=3, interp_min_count=1,
        interp_options={"n_top": 6, "n_explain": 3, "n_samples": 3, "n_negatives": 3, "left": 4, "right": 1,
                        "embedding": False, "fuzz": False}, expected="seconds",
    ),
    "quick": LLMPreset(
        name="quick", steps=300, sparse_coding_steps=100, sparse_coding_iter=20, eval_tokens=2_048,
        solver_iter=50, workers=2,
        interp_options={"n_top": 10, "n_explain": 6, "n_samples": 4, "n_negatives": 4, "left": 12, "right": 3,
                        "n_planted": 24, "shuffled_fuzz": True, "n_fuzz": 2},
        expected="about 56 minutes on 2 CPU cores (measured 2026-12-03: data 6 min, train 8.5, evaluate 11, probe 3, "
        "interp 28; docs/llm-study.md); each stage's time is in stages/*.json",
    ),
    "study": LLMPreset(
        name="study", train_contexts=100_000, test_contexts=8_000, dtype="float16", compute_dtype="float32",
        harvest_threads=None, expansion=22, steps=50_000,
        sparse_coding_steps=10_000, batch_size=4096, loss="study", l1={16: 1e-4, 64: 1e-4}, sparse_coding_iter=100,
        eval_tokens=100_000, eval_contexts=256, calibration_tokens=4096, solver_iter=500, interp_latents=200,
        llm_threads=8, llm_servers=1, device="cuda",
        expected="about 12 hours on one H100-class GPU (harvest 1 h, training 8 runs x ~1 h, evaluation 1 h, "
        "interp 2 h); on CPU it runs within 24 GB of RAM but takes days",
    ),
}  # fmt: skip


def get_preset(name: str, **overrides: Any) -> LLMPreset:
    """Preset `name` with `overrides` (e.g. model=, text= for a local model and corpus)."""
    if name not in PRESETS:
        raise SparseInferError(f"unknown llm preset {name!r}; choose one of {', '.join(PRESETS)}")
    unknown = sorted(set(overrides) - set(LLMPreset.__dataclass_fields__))
    if unknown:
        raise SparseInferError(f"unknown preset field(s) {unknown}")
    preset = replace(PRESETS[name], **overrides)
    bad = sorted(set(preset.families) - set(FAMILIES)) + sorted(set(preset.methods) - set(METHODS))
    if bad:
        raise SparseInferError(f"unknown families/methods {bad}; families: {FAMILIES}, methods: {METHODS}")
    for pair in preset.interp_methods:
        family, _, method = pair.partition(":")
        valid = family in preset.families and method in preset.methods and (family, method) != ("sparse_coding", "ito")
        if not valid or (method == "own" and family != "sparse_coding"):
            raise SparseInferError(
                f"interp_methods entry {pair!r}: give 'family:method' with a family and method of this preset "
                "(own only for sparse_coding, whose own inference is calibrated; amortised own encoders are always "
                "explained)"
            )
    return preset
