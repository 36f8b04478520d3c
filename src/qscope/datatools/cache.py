"""Example-level SAE codes of many texts, computed once and cached on disk.

Every classifier, baseline, K and data fraction needs the same two things per text and layer:
the max activation of each feature over the text's tokens (position 0 skipped, like
`TextCodes.dense_max`) and the mean-pooled raw residual. One forward captures all layers; the
results go to `QSCOPE_HOME/codes/<fingerprint>/part-*.npz` (keyed by a hash of each text) as
they are made, so a killed run resumes where it stopped and later tasks reuse earlier texts.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from ..errors import QScopeError
from ..features.codes import TextCodes
from ..io import atomic_path, write_json
from ..paths import home_dir

if TYPE_CHECKING:
    from ..model import LM
    from ..sae import SAE

CHUNK = 64  # texts per forward chunk and per part file


@dataclass
class Codes:
    """Per layer: `max_acts` (n, d_sae) sparse max activation, `means` (n, d_model) mean residual."""

    layers: list[int]
    max_acts: dict[int, sp.csr_matrix]
    means: dict[int, np.ndarray]

    def __len__(self) -> int:
        return self.max_acts[self.layers[0]].shape[0]

    def fires(self, layer: int) -> sp.csr_matrix:
        """Example-level firing h = 1[max_t a > 0] as a sparse 0/1 matrix."""
        return (self.max_acts[layer] > 0).astype(np.float32).tocsr()

    def subset(self, rows: Sequence[int]) -> "Codes":
        rows = np.asarray(rows, dtype=np.int64)
        return Codes(
            self.layers, {l: m[rows] for l, m in self.max_acts.items()}, {l: m[rows] for l, m in self.means.items()}
        )


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


@torch.no_grad()
def capture_examples(
    lm: LM, layers: Sequence[int], texts: Sequence[str], max_length: int = 128, batch_size: int = 16
) -> list[dict[int, torch.Tensor]]:
    """Per text, {layer: (n_tokens, d_model) residuals} from one forward per batch."""
    cap = lm.capture(list(texts), list(layers), max_length=max_length, batch_size=batch_size)
    return [{l: cap.acts[l][row][cap.mask[row]].float().cpu() for l in layers} for row in range(len(texts))]


@torch.no_grad()
def codes_from_residuals(saes: dict[int, SAE], residuals: Sequence[dict[int, torch.Tensor]]) -> Codes:
    """Example-level codes from per-text residuals: max activation per feature (position 0
    skipped, as `TextCodes.dense_max`) and the mean residual over the same positions."""
    layers = sorted(saes)
    max_acts, means = {}, {}
    for layer in layers:
        sae = saes[layer]
        lengths = [r[layer].shape[0] for r in residuals]
        h = torch.cat([r[layer] for r in residuals]).float().cpu()
        if sae.cfg.activation == "topk":
            values, indices = sae.encode_topk(h.to(sae.W_enc.device))
            values, indices = values.float().cpu(), indices.cpu()
        else:  # JumpReLU / ReLU: any number of features may be active, so use the dense code
            full = sae.encode(h.to(sae.W_enc.device)).float().cpu()
        dense, pooled, start = [], [], 0
        for row, n in enumerate(lengths):
            first = 1 if n > 1 else 0
            if sae.cfg.activation == "topk":
                dense.append(
                    TextCodes(row, [""] * n, values[start : start + n], indices[start : start + n]).dense_max(
                        sae.cfg.d_sae
                    )
                )
            else:
                dense.append(full[start + first : start + n].max(0).values.clamp(min=0))
            pooled.append(h[start + first : start + n].mean(0))
            start += n
        max_acts[layer] = sp.csr_matrix(torch.stack(dense).numpy().astype(np.float32))
        means[layer] = torch.stack(pooled).numpy().astype(np.float32)
    return Codes(layers, max_acts, means)


def encode_examples(
    lm: LM, saes: dict[int, SAE], texts: Sequence[str], max_length: int = 128, batch_size: int = 16
) -> Codes:
    """Codes of `texts` for every layer in `saes`, from one forward per batch (no cache)."""
    for layer in saes:
        lm.check_sae(saes[layer], layer)
    return codes_from_residuals(saes, capture_examples(lm, sorted(saes), texts, max_length, batch_size))


class _PartStore:
    """What both caches share: texts keyed by `text_key`, stored CHUNK at a time in
    `folder/part-*.npz`, each part written atomically as soon as it is made, so a killed run
    keeps every finished chunk and a rerun does only the rest."""

    folder: Path
    _where: dict[str, object]  # text key -> where its row is stored

    def missing(self, texts: Sequence[str]) -> list[str]:
        return [t for t in dict.fromkeys(texts) if text_key(t) not in self._where]

    def ensure(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> None:
        """Store the texts not cached yet (shortest first, to waste little on padding)."""
        todo = sorted(self.missing(texts), key=len)
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start : start + CHUNK]
            self._store(chunk)
            if progress:
                progress(len(chunk))

    def _store(self, chunk: list[str]) -> None:
        raise NotImplementedError

    def _write_part(self, keys: list[str], arrays: dict[str, np.ndarray]) -> Path:
        target = self.folder / f"part-{len(list(self.folder.glob('part-*.npz'))):05d}-{keys[0][:8]}.npz"
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
        return target


class ResidualStore(_PartStore):
    """Optional first cache level: per-token residuals (fp16) of each text, independent of any
    SAE, so evaluating retrained SAEs on the same texts needs no forward pass. About
    n_tokens x layers x d_model x 2 bytes on disk."""

    def __init__(
        self, lm: LM, layers: Sequence[int], folder: str | Path | None = None, max_length: int = 128,
        batch_size: int = 16,
    ) -> None:
        self.lm, self.layers, self.max_length, self.batch_size = lm, sorted(layers), max_length, batch_size
        lm.check_layers(self.layers)
        key = hashlib.sha1(f"{lm.name}|{lm.n_layers}|{lm.d_model}|{max_length}|{self.layers}".encode()).hexdigest()[:16]
        self.folder = (Path(folder) if folder else home_dir("residuals")) / key
        self.folder.mkdir(parents=True, exist_ok=True)
        self._where: dict[str, tuple[Path, int]] = {}
        for part in sorted(self.folder.glob("part-*.npz")):
            with np.load(part, allow_pickle=False) as z:
                for row, k in enumerate(z["keys"]):
                    self._where.setdefault(str(k), (part, row))

    def _store(self, chunk: list[str]) -> None:
        res = capture_examples(self.lm, self.layers, chunk, self.max_length, self.batch_size)
        keys = [text_key(t) for t in chunk]
        arrays = {"keys": np.array(keys), "lengths": np.array([r[self.layers[0]].shape[0] for r in res])}
        for l in self.layers:
            arrays[f"r{l}"] = torch.cat([r[l] for r in res]).numpy().astype(np.float16)
        target = self._write_part(keys, arrays)
        for row, k in enumerate(keys):
            self._where.setdefault(k, (target, row))

    def get(self, texts: Sequence[str]) -> list[dict[int, torch.Tensor]]:
        """Stored residuals of `texts` (all must be present; see `ensure`)."""
        out = []
        for t in texts:
            path, row = self._where[text_key(t)]
            z = _load_part(path)
            start = int(z["offsets"][row])
            n = int(z["lengths"][row])
            out.append({l: torch.from_numpy(z[f"r{l}"][start : start + n].astype(np.float32)) for l in self.layers})
        return out


@functools.lru_cache(maxsize=4)
def _load_part(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    data["offsets"] = np.concatenate([[0], np.cumsum(data["lengths"])[:-1]])
    return data


def _fingerprint(lm: LM, saes: dict[int, SAE], max_length: int, via_fp16: bool = False) -> str:
    """Which model, SAE weights and truncation produced the codes (any change = new cache)."""
    digest = hashlib.sha1(
        f"{lm.name}|{lm.n_layers}|{lm.d_model}|{max_length}{'|fp16-residuals' if via_fp16 else ''}".encode()
    )
    for layer in sorted(saes):
        sae = saes[layer]
        digest.update(f"|{layer}|{sae.cfg.d_sae}|{sae.cfg.k}|{sae.cfg.activation}|{sae.fingerprint()}".encode())
    return digest.hexdigest()[:16]


class CodeCache(_PartStore):
    """Disk cache of `encode_examples` results, keyed by text; resumable chunk by chunk."""

    def __init__(
        self,
        lm: LM,
        saes: dict[int, SAE],
        folder: str | Path | None = None,
        max_length: int = 128,
        batch_size: int = 16,
        residuals: ResidualStore | None = None,
    ) -> None:
        if residuals is not None and (residuals.max_length != max_length or not set(saes) <= set(residuals.layers)):
            raise QScopeError("the residual store was made with another max_length or lacks some SAE layers")
        self.residuals = residuals
        if not saes:
            raise QScopeError("no SAE given: pass at least one {layer: SAE}")
        self.lm, self.saes, self.max_length, self.batch_size = lm, saes, max_length, batch_size
        self.layers = sorted(saes)
        root = Path(folder) if folder else home_dir("codes")
        self.folder = root / _fingerprint(lm, saes, max_length, residuals is not None)
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "model": lm.name,
            "layers": self.layers,
            "max_length": max_length,
            "d_sae": {str(l): s.cfg.d_sae for l, s in saes.items()},
        }
        write_json(self.folder / "meta.json", meta)
        self._where: dict[str, int] = {}  # text key -> row in the stacked parts
        self._parts: list[Codes] = []
        self._stacked: Codes | None = None
        for part in sorted(self.folder.glob("part-*.npz")):
            self._load_part(part)

    def _load_part(self, path: Path) -> None:
        with np.load(path, allow_pickle=False) as z:
            keys = [str(k) for k in z["keys"]]
            max_acts = {
                l: sp.csr_matrix(
                    (z[f"v{l}"].astype(np.float32), z[f"i{l}"], z[f"p{l}"]), shape=(len(keys), self.saes[l].cfg.d_sae)
                )
                for l in self.layers
            }
            means = {l: z[f"m{l}"].astype(np.float32) for l in self.layers}
        offset = sum(len(c) for c in self._parts)
        self._parts.append(Codes(self.layers, max_acts, means))
        self._stacked = None
        for row, key in enumerate(keys):
            self._where.setdefault(key, offset + row)

    def _save_part(self, keys: list[str], codes: Codes) -> None:
        arrays: dict[str, np.ndarray] = {"keys": np.array(keys)}
        for l in self.layers:
            m = codes.max_acts[l]
            arrays.update(
                {
                    f"v{l}": m.data.astype(np.float16),
                    f"i{l}": m.indices.astype(np.int32),
                    f"p{l}": m.indptr.astype(np.int64),
                    f"m{l}": codes.means[l].astype(np.float16),
                }
            )
        target = self._write_part(keys, arrays)
        self._load_part(target)  # read back as stored (fp16), so cached and fresh codes are identical

    def _store(self, chunk: list[str]) -> None:
        if self.residuals is not None:
            self.residuals.ensure(chunk)
            codes = codes_from_residuals(self.saes, self.residuals.get(chunk))
        else:
            codes = encode_examples(self.lm, self.saes, chunk, self.max_length, self.batch_size)
        self._save_part([text_key(t) for t in chunk], codes)

    def codes(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> Codes:
        """Codes of `texts` in order, encoding whatever is missing first."""
        self.ensure(texts, progress)
        if self._stacked is None:
            self._stacked = Codes(
                self.layers,
                {l: sp.vstack([c.max_acts[l] for c in self._parts]).tocsr() for l in self.layers},
                {l: np.concatenate([c.means[l] for c in self._parts]) for l in self.layers},
            )
        return self._stacked.subset([self._where[text_key(t)] for t in texts])
