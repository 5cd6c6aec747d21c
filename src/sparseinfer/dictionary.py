"""`Dictionary`: the decoder. Atoms are the ROWS of `atoms` (n_latents, dim), unit L2 norm; x_hat = s @ atoms + bias."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.nn import functional as F

from sparseinfer.codes import Codes, SparseCodes
from sparseinfer.errors import SparseInferError
from sparseinfer.validation import check_finite, check_matrix

WEIGHTS_FILE = "dictionary.safetensors"
CONFIG_FILE = "cfg.json"


class Dictionary(nn.Module):
    """A learnable or fixed set of unit-norm atoms with an optional bias (decoder bias, SAELens `b_dec`)."""

    def __init__(self, atoms: Tensor, bias: Tensor | bool | None = None, normalise: bool = True) -> None:
        super().__init__()
        check_matrix(atoms, "dictionary atoms")
        norms = atoms.norm(dim=1)
        if (norms <= 1e-12).any():
            zero = torch.nonzero(norms <= 1e-12).flatten().tolist()[:5]
            raise SparseInferError(f"dictionary has zero atom(s) at row(s) {zero}; every atom needs a direction")
        self.atoms = nn.Parameter(atoms / norms[:, None] if normalise else atoms.clone())
        if bias is True:
            bias = atoms.new_zeros(atoms.shape[1])
        if isinstance(bias, Tensor):
            if bias.shape != (atoms.shape[1],):
                raise SparseInferError(f"dictionary bias must have shape ({atoms.shape[1]},), got {tuple(bias.shape)}")
            check_finite(bias, "dictionary bias")
            self.bias: nn.Parameter | None = nn.Parameter(bias.to(atoms.dtype).clone())
        else:
            self.bias = None

    @property
    def n_latents(self) -> int:
        """N, the number of atoms."""
        return self.atoms.shape[0]

    @property
    def dim(self) -> int:
        """M, the dimension of the signals."""
        return self.atoms.shape[1]

    @classmethod
    def random(
        cls,
        n_latents: int,
        dim: int,
        seed: int | None = None,
        bias: bool = False,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> Dictionary:
        """Standard Gaussian atoms scaled to unit norm (the protocol's dictionary)."""
        if n_latents < 1 or dim < 1:
            raise SparseInferError(f"dictionary needs n_latents >= 1 and dim >= 1, got ({n_latents}, {dim})")
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        atoms = torch.randn(n_latents, dim, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
        return cls(atoms, bias=bias)

    @classmethod
    def from_tensor(cls, atoms: Tensor, bias: Tensor | None = None, normalise: bool = True) -> Dictionary:
        """Wrap given atoms (rows); renormalised to unit norm unless `normalise=False`."""
        return cls(atoms.detach(), bias=None if bias is None else bias.detach(), normalise=normalise)

    def decode(self, codes: Codes) -> Tensor:
        """Reconstruct signals from dense (batch, n_latents) codes or sparse (values, indices) codes."""
        if isinstance(codes, SparseCodes):
            if codes.n_latents != self.n_latents:
                raise SparseInferError(f"codes have {codes.n_latents} latents, dictionary has {self.n_latents}")
            idx = codes.indices
            if idx.device.type == "cpu" and idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.n_latents):
                raise SparseInferError(f"sparse code indices must lie in [0, {self.n_latents})")
            self._check_dtype(codes.values)
            x_hat = self.combine(codes.values, idx)
        else:
            if codes.ndim != 2 or codes.shape[1] != self.n_latents:
                raise SparseInferError(f"codes must have shape (batch, {self.n_latents}), got {tuple(codes.shape)}")
            self._check_dtype(codes)
            x_hat = codes @ self.atoms
        return x_hat if self.bias is None else x_hat + self.bias

    def combine(self, values: Tensor, indices: Tensor) -> Tensor:
        """sum_j values[:, j] * atoms[indices[:, j]] (no bias) as an embedding bag: no (batch, k, dim) gather is
        materialised, forward or backward. On a GPU the index bound check is the kernel's own (a host-side check
        would synchronise every step)."""
        return F.embedding_bag(indices, self.atoms, per_sample_weights=values.to(self.atoms.dtype), mode="sum")

    def _check_dtype(self, values: Tensor) -> None:
        if values.dtype != self.atoms.dtype and not torch.is_autocast_enabled(values.device.type):
            raise SparseInferError(f"codes have dtype {values.dtype} but the dictionary has {self.atoms.dtype}")

    def forward(self, codes: Codes) -> Tensor:
        """Same as `decode`."""
        return self.decode(codes)

    def centre(self, x: Tensor) -> Tensor:
        """Subtract the bias from signals (what the codes must explain)."""
        return x if self.bias is None else x - self.bias

    @torch.no_grad()
    def renormalise_(self) -> Dictionary:
        """Rescale every atom to unit norm in place (after an optimiser step); an all-zero atom stays zero."""
        self.atoms.div_(self.atoms.norm(dim=1, keepdim=True).clamp_min(1e-12))
        return self

    def gram(self) -> Tensor:
        """The (n_latents, n_latents) Gram matrix atoms @ atoms.T."""
        return self.atoms @ self.atoms.T

    def lipschitz(self) -> float:
        """Largest eigenvalue of the Gram matrix: the Lipschitz constant of the least-squares gradient."""
        a = self.atoms.detach().double()
        return float(torch.linalg.matrix_norm(a, ord=2) ** 2)

    def save(self, folder: str | Path) -> Path:
        """Write `dictionary.safetensors` and `cfg.json` into `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"W_dec": self.atoms.detach().contiguous().cpu()}
        if self.bias is not None:
            tensors["b_dec"] = self.bias.detach().contiguous().cpu()
        save_file(tensors, str(folder / WEIGHTS_FILE))
        cfg = {"d_sae": self.n_latents, "d_in": self.dim, "dtype": str(self.atoms.dtype).removeprefix("torch.")}
        (folder / CONFIG_FILE).write_text(json.dumps(cfg, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Dictionary:
        """Read a dictionary written by `save`; clear errors for missing or corrupt files."""
        folder = Path(folder)
        path = folder / WEIGHTS_FILE if folder.is_dir() else folder
        if not path.exists():
            raise SparseInferError(f"no dictionary file at {path}")
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise SparseInferError(f"corrupt dictionary file {path}: {err}") from None
        if "W_dec" not in tensors:
            raise SparseInferError(f"{path} has no 'W_dec' tensor (found {sorted(tensors)})")
        atoms = tensors["W_dec"]
        cfg_path = path.parent / CONFIG_FILE
        if cfg_path.exists():
            try:
                cfg = json.loads(cfg_path.read_text())
            except json.JSONDecodeError as err:
                raise SparseInferError(f"corrupt {cfg_path}: {err}") from None
            expected = (cfg.get("d_sae", atoms.shape[0]), cfg.get("d_in", atoms.shape[-1]))
            if atoms.ndim != 2 or tuple(atoms.shape) != expected:
                raise SparseInferError(f"{path}: W_dec has shape {tuple(atoms.shape)} but {cfg_path} says {expected}")
        return cls(atoms, bias=tensors.get("b_dec"), normalise=False)

    def extra_repr(self) -> str:
        return f"n_latents={self.n_latents}, dim={self.dim}, bias={self.bias is not None}"
