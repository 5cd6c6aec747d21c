"""Hook points on any torch model: capture activations (stopping the forward early) or splice replacements in.

A hook point is a module name plus `input` or `output`, written `model.layers.9` (output) or
`model.layers.9:input`. Aliases for transformer blocks, found by the model's block list (`layers`, `h`, `blocks`):
`resid_pre.9` (the residual stream entering block 9), `resid_post.9` (leaving it), `mlp_out.9`, `attn_out.9`.
Glob patterns select several at once: `*` matches within one dotted name part, `**` across parts
(`resid_post.*`, `model.layers.*.mlp`). SAELens / TransformerLens names (`blocks.3.hook_resid_pre`,
`blocks.3.hook_resid_post`, `blocks.3.hook_mlp_out`, `blocks.3.hook_attn_out`) are read as those aliases
(`from_saelens_hook`); `to_saelens_hook` writes them back for a hook point of ours.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from sparseinfer.errors import SparseInferError

_BLOCK_LISTS = ("layers", "h", "blocks")
_ALIASES = {"resid_pre": ("", "input"), "resid_post": ("", "output"), "mlp_out": (".mlp", "output")}
_ATTENTION = ("self_attn", "attn", "attention")
_SAELENS = {"hook_resid_pre": "resid_pre", "hook_resid_post": "resid_post", "hook_mlp_out": "mlp_out",
            "hook_attn_out": "attn_out"}  # fmt: skip
_SAELENS_NAME = re.compile(r"blocks\.(\d+)\.(.+)\Z")
_MODULE_LABEL = re.compile(r"(?:.*\.)?(?:layers|h|blocks)\.(\d+)(\.(?:mlp|self_attn|attn|attention))?(:input)?\Z")


@dataclass(frozen=True)
class HookPoint:
    """A module (by its name in `named_modules`) and which side of it: its first input or its output."""

    module: str
    side: str = "output"

    @property
    def label(self) -> str:
        """The canonical string form, usable as a file name part."""
        return self.module if self.side == "output" else f"{self.module}:input"


class _StopForward(Exception):
    """Raised from the last capturing hook so the rest of the forward pass is skipped."""


def _glob(pattern: str) -> re.Pattern[str]:
    parts = re.split(r"(\*\*|\*|\?)", pattern)
    table = {"**": ".*", "*": r"[^.]*", "?": r"[^.]"}
    return re.compile("".join(table.get(p, re.escape(p)) for p in parts) + r"\Z")


def block_list(model: nn.Module) -> str:
    """Name of the model's list of transformer blocks (e.g. `model.layers` for Llama, `transformer.h` for GPT-2)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] in _BLOCK_LISTS:
            return name
    raise SparseInferError("model has no list of transformer blocks (layers / h / blocks); give module names instead")


def from_saelens_hook(name: str) -> str | None:
    """Our alias for a SAELens / TransformerLens hook name (`blocks.3.hook_resid_pre` -> `resid_pre.3`); None when
    `name` is not of the `blocks.L.hook_*` form. A TransformerLens hook our hook points cannot express (inside
    attention or the MLP, layer norms, `hook_resid_mid`) raises a one-line error."""
    match = _SAELENS_NAME.match(name)
    if match is None or not match.group(2).rsplit(".", 1)[-1].startswith("hook_"):
        return None
    layer, hook = match.groups()
    if hook not in _SAELENS:
        raise SparseInferError(
            f"SAELens hook {name!r} has no hook point here (supported: blocks.L.{', blocks.L.'.join(_SAELENS)}); "
            "give the module name with --hook"
        )
    return f"{_SAELENS[hook]}.{layer}"


def to_saelens_hook(label: str) -> str | None:
    """The SAELens / TransformerLens name of one of our hook labels or aliases (`resid_pre.3`, `model.layers.3:input`
    -> `blocks.3.hook_resid_pre`; `model.layers.3` -> `blocks.3.hook_resid_post`; `.mlp` -> `hook_mlp_out`;
    attention -> `hook_attn_out`); None when it has no such name. Already-SAELens names pass through."""
    if _SAELENS_NAME.match(label) and label.split(".", 2)[2] in _SAELENS:
        return label
    head, _, index = label.partition(".")
    if head in _SAELENS.values() and index.isdigit():
        return f"blocks.{index}.hook_{head}"
    match = _MODULE_LABEL.match(label)
    if match is None:
        return None
    layer, child, inp = match.groups()
    if child is None:
        return f"blocks.{layer}.hook_resid_{'pre' if inp else 'post'}"
    if inp:
        return None
    return f"blocks.{layer}.hook_{'mlp' if child == '.mlp' else 'attn'}_out"


def _expand_alias(model: nn.Module, pattern: str) -> tuple[str, str] | None:
    pattern = from_saelens_hook(pattern) or pattern
    head, _, index = pattern.partition(".")
    if head not in (*_ALIASES, "attn_out") or not index:
        return None
    blocks = block_list(model)
    if head == "attn_out":
        block = dict(model.named_modules())[f"{blocks}.0"]
        child = next((c for c in _ATTENTION if hasattr(block, c)), None)
        if child is None:
            raise SparseInferError("cannot find the attention module of a block; give its module name instead")
        return f"{blocks}.{index}.{child}", "output"
    suffix, side = _ALIASES[head]
    return f"{blocks}.{index}{suffix}", side


def resolve_hook_points(model: nn.Module, patterns: str | list[str]) -> list[HookPoint]:
    """Expand names, aliases and glob patterns into hook points: patterns in the order given, each glob's matches in
    `named_modules` order, duplicates dropped."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    if not patterns:
        raise SparseInferError("no hook point given")
    names = [n for n, _ in model.named_modules() if n]
    found: list[HookPoint] = []
    for pattern in patterns:
        alias = _expand_alias(model, pattern)
        if alias is not None:
            module_pattern, side = alias
        else:
            module_pattern, _, side = pattern.partition(":")
            side = side or "output"
        if side not in ("input", "output"):
            raise SparseInferError(f"hook point {pattern!r}: side must be 'input' or 'output', got {side!r}")
        regex = _glob(module_pattern)
        matches = [HookPoint(n, side) for n in names if regex.match(n)]
        if not matches:
            example = ", ".join(names[:4])
            raise SparseInferError(f"hook point {pattern!r} matches no module (module names look like: {example}, ...)")
        found.extend(m for m in matches if m not in found)
    return found


def _first_tensor(value: Any) -> Tensor:
    return value[0] if isinstance(value, tuple | list) else value


def _register(module: nn.Module, side: str, fn: Callable[[Tensor], Tensor | None]) -> torch.utils.hooks.RemovableHandle:
    """Call `fn` on the module's first input or output; a returned tensor replaces it."""
    if side == "output":

        def post(_m: nn.Module, _args: Any, output: Any) -> Any:
            new = fn(_first_tensor(output))
            if new is None:
                return None
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return module.register_forward_hook(post)

    def pre(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if args:
            new = fn(args[0])
            return None if new is None else ((new, *args[1:]), kwargs)
        key = "hidden_states" if "hidden_states" in kwargs else next(iter(kwargs), None)
        if key is None:
            raise SparseInferError(f"module {type(_m).__name__} was called without inputs; hook its output instead")
        new = fn(kwargs[key])
        return None if new is None else (args, {**kwargs, key: new})

    return module.register_forward_pre_hook(pre, with_kwargs=True)


@contextmanager
def _hooks(model: nn.Module, hooks: list[tuple[HookPoint, Callable[[Tensor], Tensor | None]]]) -> Iterator[None]:
    modules = dict(model.named_modules())
    handles = [_register(modules[p.module], p.side, fn) for p, fn in hooks]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def capture(
    model: nn.Module, input_ids: Tensor, points: list[HookPoint], attention_mask: Tensor | None = None
) -> dict[HookPoint, Tensor]:
    """Run the model on `input_ids` and return each hook point's activation (batch, seq, dim), detached.

    The forward pass stops as soon as every point has been seen, so layers after the last one never run.
    """
    store: dict[HookPoint, Tensor] = {}

    def saver(point: HookPoint) -> Callable[[Tensor], None]:
        def fn(t: Tensor) -> None:
            store.setdefault(point, t.detach())
            if len(store) == len(points):
                raise _StopForward

        return fn

    with _hooks(model, [(p, saver(p)) for p in points]):
        try:
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _StopForward:
            pass
    missing = [p.label for p in points if p not in store]
    if missing:
        raise SparseInferError(f"hook point(s) {missing} never ran in the forward pass")
    return store


@contextmanager
def splice(model: nn.Module, point: HookPoint, replace: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """Within the block, the activation at `point` is replaced by `replace(activation)` on every forward pass."""
    with _hooks(model, [(point, replace)]):
        yield
