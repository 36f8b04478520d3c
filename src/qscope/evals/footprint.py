"""Feature footprints: which SAE features a benchmark's items light up.

F(x) = { j : z_j(x) > 0 } at the LAST token of the prompt (where the model is about to answer),
or with `position="any"` at any token but position 0 (the attention sink fires on everything).
F(D) = union over the items of D. Footprints are the one expensive step of every evaluation
analysis (a forward per item), so each item's footprint is appended to a cache file as soon as
it is computed: reruns are free and interrupted runs resume where they stopped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np
import torch

from ..data.benchmarks import BenchItem, item_key, resume_order
from ..errors import QScopeError
from ..io import ItemCache
from ..paths import file_slug, home_dir

if TYPE_CHECKING:
    from ..model import LM
    from ..sae import SAE

POSITIONS = ("last", "any")


@dataclass
class FootprintConfig:
    layer: int | None = None  # default: the SAE's own layer
    position: str = "last"  # "last" token, "any" token except position 0, or "both" (one footprint each)
    max_length: int = 512  # longer prompts keep their LAST max_length tokens
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.position not in (*POSITIONS, "both"):
            raise QScopeError(f"position must be one of {(*POSITIONS, 'both')}, got {self.position!r}")

    @property
    def positions(self) -> list[str]:
        return list(POSITIONS) if self.position == "both" else [self.position]


@dataclass
class Footprint:
    """Per-item active feature sets of one benchmark (sorted int arrays) and their union."""

    benchmark: str
    item_ids: list[str]
    items: list[np.ndarray]
    d_sae: int
    layer: int | None = None
    position: str = "last"
    meta: dict = field(default_factory=dict)

    @property
    def union(self) -> np.ndarray:
        return np.unique(np.concatenate(self.items)) if self.items else np.zeros(0, dtype=np.int64)

    @property
    def size(self) -> int:
        return int(len(self.union))

    def counts(self) -> np.ndarray:
        """(d_sae,) number of items in which each feature is active."""
        return np.bincount(np.concatenate(self.items), minlength=self.d_sae) if self.items else np.zeros(self.d_sae, int)

    def subset(self, n: int) -> "Footprint":
        """The first `n` items (loaders' seeded samples are prefix-stable, so this is a smaller sample)."""
        return Footprint(self.benchmark, self.item_ids[:n], self.items[:n], self.d_sae, self.layer, self.position, self.meta)

    def to_dict(self, items: bool = False) -> dict:
        sizes = [len(f) for f in self.items]
        out = {"benchmark": self.benchmark, "n_items": len(self.items), "footprint_size": self.size,
               "fraction_of_features": round(self.size / self.d_sae, 4), "d_sae": self.d_sae, "layer": self.layer,
               "position": self.position, "mean_item_size": round(float(np.mean(sizes)), 2) if sizes else 0.0, **self.meta}
        if items:
            out["items"] = [[i, f.tolist()] for i, f in zip(self.item_ids, self.items)]
        return out


# ---------------------------------------------------------------------------- cache
def cache_file(lm: LM, sae: SAE, layer: int, position: str, benchmark: str, max_length: int,
               root: Path | None = None) -> Path:
    root = Path(root) if root else home_dir("footprints")
    key = f"{file_slug(lm.name)}__sae-{sae.fingerprint()}-k{sae.cfg.k}__L{layer}__{position}__T{max_length}"
    return root / key / f"{file_slug(benchmark)}.jsonl"


# ---------------------------------------------------------------------------- compute
def item_features(values, indices, position: str) -> np.ndarray:
    """Active feature ids of one text's codes (T, k) at the last token / any token but 0."""
    if position == "last":
        v, i = values[-1], indices[-1]
    else:
        start = 1 if values.shape[0] > 1 else 0
        v, i = values[start:].reshape(-1), indices[start:].reshape(-1)
    return np.unique(i[v > 0].numpy()).astype(np.int64)


@torch.no_grad()
def compute_footprints(lm: LM, saes: Sequence[SAE], items: Sequence[BenchItem], config: FootprintConfig | None = None,
                       benchmark: str | None = None, cache: bool | Path = True,
                       progress: Callable[[int], None] | None = None) -> list[Footprint]:
    """Footprints of one benchmark's `items` under several SAEs (each at its own layer) from ONE
    forward per batch, stopped after the deepest layer - the cost of three layers is about that
    of the deepest. `cache`: True = under QSCOPE_HOME/footprints, a folder, or False.
    `progress(n)` is called with each batch's size (cached items included). The result lists
    every (SAE, position) pair, SAE-major."""
    config = config or FootprintConfig()
    positions = config.positions
    if not items:
        raise QScopeError(f"benchmark {benchmark or '?'}: no items to take a footprint of")
    if config.layer is not None and len(saes) > 1:
        raise QScopeError("give one SAE per layer (the SAEs' own layers) when computing several footprints")
    layers = [lm.check_sae(sae, config.layer) for sae in saes]
    benchmark = benchmark or items[0].benchmark or "benchmark"
    keys = [item_key(it) for it in items]
    combos = [(sae, layer, pos) for sae, layer in zip(saes, layers) for pos in positions]
    paths = [cache_file(lm, sae, layer, pos, benchmark, config.max_length, None if cache is True else cache)
             if cache is not False else None for sae, layer, pos in combos]
    found = [ItemCache(path) for path in paths]  # records {"id", "h", "f": feature ids}
    todo = [j for j, key in enumerate(keys) if any(key not in f for f in found)]
    if progress and len(items) > len(todo):
        progress(len(items) - len(todo))
    todo = resume_order(todo, items, config.batch_size)
    for start in range(0, len(todo), config.batch_size):
        chunk = todo[start:start + config.batch_size]
        with lm.left_truncation():
            cap = lm.capture([items[j].prompt for j in chunk], sorted(set(layers)), max_length=config.max_length,
                             batch_size=config.batch_size)
        codes = {}
        for (sae, layer, pos), got in zip(combos, found):
            records = []
            for row, j in enumerate(chunk):
                if (id(sae), row) not in codes:
                    v, i = sae.encode_topk(cap.acts[layer][row][cap.mask[row]], sae.cfg.k or 64)
                    codes[id(sae), row] = (v.float().cpu(), i.cpu())
                features = item_features(*codes[id(sae), row], pos)
                records.append({"id": keys[j][0], "h": keys[j][1], "f": features.tolist()})
            got.add(records)
        if progress:
            progress(len(chunk))
    return [Footprint(benchmark, [k[0] for k in keys], [np.asarray(got[k]["f"], dtype=np.int64) for k in keys],
                      sae.cfg.d_sae, layer, pos,
                      {"model": lm.name, "sae": sae.fingerprint(), "max_length": config.max_length})
            for (sae, layer, pos), got in zip(combos, found)]


@dataclass
class FootprintResult:
    """Footprints of several benchmarks, grouped by "L<layer>" (plus "-any" for the any-token
    position), each group in benchmark order."""

    groups: dict[str, list[Footprint]]

    def to_dict(self) -> dict:
        return {label: [f.to_dict() for f in fps] for label, fps in self.groups.items()}


def group_label(layer: int | None, position: str) -> str:
    return f"L{layer}" + ("" if position == "last" else f"-{position}")


def run_footprint(lm: LM, saes: Sequence[SAE] | Mapping[int, SAE], benchmarks: Mapping[str, Sequence[BenchItem]],
                  config: FootprintConfig | None = None, cache: bool | Path = True,
                  progress: Callable[[str, int, int], None] | None = None) -> FootprintResult:
    """Footprint of each benchmark ({name: items}) under every SAE and position of `config`, one
    forward per batch for all of them. `progress(benchmark, n, total)` follows each benchmark."""
    config = config or FootprintConfig()
    saes = list(saes.values()) if isinstance(saes, Mapping) else list(saes)
    groups: dict[str, list[Footprint]] = {}
    for name, items in benchmarks.items():
        tick = (lambda n, name=name, total=len(items): progress(name, n, total)) if progress else None
        for fp in compute_footprints(lm, saes, items, config, benchmark=name, cache=cache, progress=tick):
            groups.setdefault(group_label(fp.layer, fp.position), []).append(fp)
    return FootprintResult(groups)


def equalise(footprints: Sequence[Footprint], items: int | None) -> tuple[list[Footprint], int | None]:
    """Footprints cut to `items` items each (footprint size and R_hat grow with |D|, so benchmarks
    are compared at equal counts); None = the smallest count, 0 = keep all. Returns (footprints, n)."""
    if items == 0:
        return list(footprints), None
    n = items or min(len(f.items) for f in footprints)
    short = [f.benchmark for f in footprints if len(f.items) < n]
    if short:
        raise QScopeError(f"items {n}: {', '.join(short)} have fewer items")
    return [f.subset(n) for f in footprints], n


def footprint_from_sets(benchmark: str, sets: Sequence[Sequence[int]], d_sae: int,
                        item_ids: Sequence[str] | None = None) -> Footprint:
    """A footprint built from given feature sets (tests, or footprints computed elsewhere)."""
    ids = list(item_ids) if item_ids is not None else [f"{benchmark}/{i}" for i in range(len(sets))]
    items = [np.unique(np.asarray(list(s), dtype=np.int64)) for s in sets]
    if any(len(s) and (s.min() < 0 or s.max() >= d_sae) for s in items):
        raise QScopeError(f"{benchmark}: feature ids must lie in 0..{d_sae - 1}")
    return Footprint(benchmark, ids, items, d_sae)


def save_footprints(path: str | Path, footprints: Sequence[Footprint]) -> None:
    """All footprints with their per-item sets, as one JSON file (input of redundancy/overlap)."""
    from ..io import atomic_path

    # Compact: one benchmark per line (indented JSON would spend a line on every feature id).
    body = ",\n".join(json.dumps(f.to_dict(items=True), separators=(",", ":")) for f in footprints)
    with atomic_path(path) as tmp:
        tmp.write_text('{"footprints": [\n' + body + "\n]}\n", encoding="utf-8")


def load_footprints(path: str | Path) -> list[Footprint]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        out = []
        for d in data["footprints"]:
            ids = [str(i) for i, _ in d["items"]]
            out.append(Footprint(d["benchmark"], ids, [np.asarray(f, dtype=np.int64) for _, f in d["items"]],
                                 int(d["d_sae"]), d.get("layer"), d.get("position", "last"),
                                 {k: d[k] for k in ("model", "sae", "max_length") if k in d}))
        return out
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise QScopeError(f"{path}: not a footprints file written by `qscope evals footprint` ({exc})") from None
