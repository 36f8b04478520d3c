"""Activation store: texts -> packed sequences -> LM residuals -> filtered tokens -> shuffled batches.

Pieces, each with a `state_dict()` so that a resumed run continues exactly where it stopped:

- `LMSource` tokenises texts, packs them into `ctx_len`-token sequences (documents joined by
  EOS), runs ONE forward per batch of sequences for all layers (stopped after the deepest),
  and drops position 0 plus tokens whose norm exceeds `norm_mult` x the running median norm
  (attention-sink tokens of Qwen models are >100x the median and would dominate the MSE).
- `CacheSource` reads fp16 shards written by `build_cache`, in a shuffled shard order per
  epoch, so epochs, runs and benchmarks reuse activations without the LM.
- `ShuffleBuffer` mixes tokens from many sequences/shards (refilled when half empty) and
  yields float32 batches {layer: (batch, d_model)}; all layers share the same token rows.

Under torch.distributed each rank reads a disjoint slice: text i goes to rank i % world,
shard j (in the epoch's order) to rank j % world.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..errors import QScopeError
from ..io import atomic_path, write_json

if TYPE_CHECKING:
    from ..model import LM

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
Texts = Iterable[str] | Callable[[], Iterable[str]]
Chunk = dict[int, Tensor]


def store_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise QScopeError(f"unknown store dtype {name!r} (one of {sorted(DTYPES)})")
    return DTYPES[name]


# --------------------------------------------------------------------------- LM source


class LMSource:
    """Residual activations of `layers` computed live from texts.

    `texts` is a list, or a zero-argument callable returning a fresh iterable (so it can be
    re-read from the start on resume and for further epochs); a one-shot iterator works too
    but then is read once only.
    """

    def __init__(self, lm: LM, layers: Sequence[int], texts: Texts, ctx_len: int = 256, lm_batch: int = 32,
                 norm_mult: float = 10.0, rank: int = 0, world: int = 1, dtype: str | torch.dtype = "float16",
                 device: torch.device | str | None = None) -> None:
        self.lm = lm
        self.layers = lm.check_layers(layers)
        self.d_model = lm.d_model
        self.ctx_len, self.lm_batch, self.norm_mult = int(ctx_len), int(lm_batch), float(norm_mult)
        if self.ctx_len < 2:
            raise QScopeError(f"ctx_len must be at least 2 (position 0 is dropped), got {ctx_len}")
        self.rank, self.world = rank, world
        self.dtype = store_dtype(dtype)
        self.device = torch.device(device) if device is not None else lm.device
        self._texts = texts
        eos = lm.tokenizer.eos_token_id
        if eos is None:
            raise QScopeError(f"{lm.name}: the tokenizer has no EOS token to join documents with")
        self.eos = int(eos)
        # State (see state_dict): position in the text stream, tokens not yet packed, norms.
        self.epoch = 0
        self.consumed = 0  # texts read in this epoch, counted over all ranks
        self.epoch_texts = 0  # of which this rank's
        self.pending: list[int] = []
        self.median: dict[int, float] = {}
        self.stats = {"tokens": 0, "sequences": 0, "dropped_first": 0, "dropped_norm": 0,
                      "dropped_norm_by_layer": {str(layer): 0 for layer in self.layers}}
        self._iter: Iterator[str] | None = None

    # ------------------------------------------------------------------ text stream
    def _reiterable(self) -> bool:
        return callable(self._texts) or isinstance(self._texts, (list, tuple))

    def _open(self) -> Iterator[str]:
        source = self._texts() if callable(self._texts) else self._texts
        return itertools.islice(iter(source), self.consumed, None)

    def _next_text(self) -> str | None:
        """Next text for this rank (texts of other ranks are skipped), moving on to the next
        epoch at the end of the stream; None when a one-shot iterator is used up."""
        while True:
            if self._iter is None:
                self._iter = self._open()
            for text in self._iter:
                index = self.consumed
                self.consumed += 1
                if index % self.world == self.rank and isinstance(text, str) and text.strip():
                    self.epoch_texts += 1
                    return text
            self._iter = None
            if not self._reiterable():
                return None
            if self.epoch_texts == 0:
                raise QScopeError(f"the training data yielded no text{f' for rank {self.rank}' if self.world > 1 else ''}")
            self.epoch, self.consumed, self.epoch_texts = self.epoch + 1, 0, 0

    def _fill(self, need: int) -> bool:
        tok = self.lm.tokenizer
        while len(self.pending) < need:
            text = self._next_text()
            if text is None:
                return False
            ids = tok(text, add_special_tokens=False, verbose=False)["input_ids"]
            self.pending.extend(ids)
            self.pending.append(self.eos)
        return True

    # ------------------------------------------------------------------ chunks
    def next_chunk(self) -> Chunk | None:
        """Filtered activations of one LM batch: {layer: (n_kept, d_model)} in the store dtype."""
        n_seq = self.lm_batch
        if not self._fill(n_seq * self.ctx_len):
            n_seq = len(self.pending) // self.ctx_len
            if n_seq == 0:
                return None
        take = n_seq * self.ctx_len
        ids = torch.tensor(self.pending[:take], dtype=torch.long).view(n_seq, self.ctx_len)
        del self.pending[:take]
        ids = ids.to(self.lm.device)
        acts = self.lm.run_to_layers(ids, torch.ones_like(ids), self.layers)
        return self._filter(acts, n_seq)

    @torch.no_grad()
    def _filter(self, acts: dict[int, Tensor], n_seq: int) -> Chunk:
        flat = {layer: a[:, 1:, :].reshape(-1, a.shape[-1]) for layer, a in acts.items()}
        drop = None
        for layer, a in flat.items():
            norms = a.float().norm(dim=-1)
            batch_median = float(norms.median())
            old = self.median.get(layer)
            self.median[layer] = batch_median if old is None else 0.9 * old + 0.1 * batch_median
            huge = norms > self.norm_mult * self.median[layer]
            self.stats["dropped_norm_by_layer"][str(layer)] += int(huge.sum())
            drop = huge if drop is None else drop | huge
        # One mask for all layers keeps their rows aligned (token t is row t in every layer).
        keep = ~drop
        n_keep = int(keep.sum())
        self.stats["sequences"] += n_seq
        self.stats["dropped_first"] += n_seq
        self.stats["dropped_norm"] += int(drop.numel()) - n_keep
        self.stats["tokens"] += n_keep
        out = {}
        for layer, a in flat.items():
            kept = a[keep]
            if self.dtype == torch.float16 and bool((kept.abs() > 65000).any()):
                raise QScopeError(f"layer {layer}: activations overflow float16; use store dtype bfloat16 or float32")
            out[layer] = kept.to(self.device, self.dtype)
        return out

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"kind": "lm", "epoch": self.epoch, "consumed": self.consumed, "epoch_texts": self.epoch_texts,
                "pending": list(self.pending),
                "median": {str(k): v for k, v in self.median.items()}, "stats": json.loads(json.dumps(self.stats)),
                "rank": self.rank, "world": self.world}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "lm":
            raise QScopeError("checkpoint store state is not an LM-source state")
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])
        self.epoch_texts = int(state.get("epoch_texts", 1))
        self.pending = [int(t) for t in state["pending"]]
        self.median = {int(k): float(v) for k, v in state["median"].items()}
        self.stats = json.loads(json.dumps(state["stats"]))
        self._iter = None


# --------------------------------------------------------------------------- cache


SHARD_PATTERN = "shard-{:05d}.safetensors"


def read_cache_meta(folder: str | Path) -> dict:
    path = Path(folder) / "meta.json"
    if not path.is_file():
        raise QScopeError(f"{folder}: not an activation cache (no meta.json); build one with `qscope train cache`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise QScopeError(f"{path}: not valid JSON ({exc})") from None


class CacheSource:
    """Shards of an activation cache, in a fresh shuffled order each epoch (seeded by epoch)."""

    def __init__(self, folder: str | Path, layers: Sequence[int] | None = None, seed: int = 0,
                 epochs: int | None = None, rank: int = 0, world: int = 1, shards: Sequence[str] | None = None,
                 device: torch.device | str = "cpu"):
        self.folder = Path(folder)
        self.meta = read_cache_meta(folder)
        have = [int(x) for x in self.meta["layers"]]
        self.layers = list(layers) if layers else have
        missing = [layer for layer in self.layers if layer not in have]
        if missing:
            raise QScopeError(f"{folder}: the cache has layers {have}, not {missing}")
        self.d_model = int(self.meta["d_model"])
        self.shards = list(shards) if shards is not None else [s["file"] for s in self.meta["shards"]]
        if len(self.shards) < world:
            raise QScopeError(f"{folder}: {len(self.shards)} shard(s) cannot feed {world} ranks")
        self.seed, self.epochs, self.rank, self.world = seed, epochs, rank, world
        self.device = torch.device(device)
        self.epoch, self.pos = 0, 0
        self.stats = {"tokens": 0, "shards_read": 0}

    def order(self, epoch: int) -> list[str]:
        """This rank's shards for `epoch`: a seeded permutation, strided over ranks."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(self.shards), generator=gen).tolist()
        return [self.shards[i] for i in perm][self.rank::self.world]

    def next_chunk(self) -> Chunk | None:
        from safetensors import safe_open

        mine = self.order(self.epoch)
        if self.pos >= len(mine):
            self.epoch, self.pos = self.epoch + 1, 0
            if self.epochs is not None and self.epoch >= self.epochs:
                return None
            mine = self.order(self.epoch)
        path = self.folder / mine[self.pos]
        self.pos += 1
        try:
            with safe_open(str(path), framework="pt") as fh:
                chunk = {layer: fh.get_tensor(f"layer{layer}").to(self.device) for layer in self.layers}
        except Exception as exc:  # safetensors raises its own error types, OSError, KeyError
            raise QScopeError(f"{path}: unreadable cache shard ({str(exc).splitlines()[0][:200]})") from None
        self.stats["tokens"] += int(next(iter(chunk.values())).shape[0])
        self.stats["shards_read"] += 1
        return chunk

    def state_dict(self) -> dict:
        return {"kind": "cache", "epoch": self.epoch, "pos": self.pos, "stats": dict(self.stats),
                "rank": self.rank, "world": self.world}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "cache":
            raise QScopeError("checkpoint store state is not a cache-source state")
        self.epoch, self.pos, self.stats = int(state["epoch"]), int(state["pos"]), dict(state["stats"])


def write_shard(path: Path, chunk: Chunk, dtype: torch.dtype) -> int:
    """One shard file {"layer<n>": (tokens, d_model)}, written atomically."""
    from safetensors.torch import save_file

    tensors = {f"layer{layer}": t.detach().to("cpu", dtype).contiguous() for layer, t in chunk.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
    return int(next(iter(tensors.values())).shape[0])


def write_cache(folder: str | Path, acts: dict[int, Tensor], shard_tokens: int = 32768, dtype: str = "float16",
                **meta) -> dict:
    """Write in-memory activations {layer: (N, d_model)} as a cache (tests, synthetic benchmarks)."""
    folder = Path(folder)
    layers = sorted(acts)
    n = int(acts[layers[0]].shape[0])
    shards = []
    for i, start in enumerate(range(0, n, shard_tokens)):
        name = SHARD_PATTERN.format(i)
        count = write_shard(folder / name, {layer: acts[layer][start:start + shard_tokens] for layer in layers},
                            store_dtype(dtype))
        shards.append({"file": name, "tokens": count})
    info = {"layers": layers, "d_model": int(acts[layers[0]].shape[1]), "dtype": dtype, "tokens": n,
            "shards": shards, "complete": True, **meta}
    write_json(folder / "meta.json", info)
    return info


def build_cache(lm: LM, layers: Sequence[int], texts: Texts, folder: str | Path, total_tokens: int, ctx_len: int = 256,
                lm_batch: int = 32, norm_mult: float = 10.0, shard_tokens: int = 32768, dtype: str = "float16",
                data: str | None = None, progress: Callable[[int, int], None] | None = None) -> dict:
    """Run the LM over `texts` and write filtered activations as shards until `total_tokens`.

    Resumable: meta.json (rewritten atomically after every shard) records the source position,
    so an interrupted build continues from its last shard; a complete cache with enough
    tokens returns at once.
    """
    folder = Path(folder)
    layers = lm.check_layers(layers)
    fixed = {"model": lm.name, "layers": layers, "d_model": lm.d_model, "ctx_len": ctx_len, "norm_mult": norm_mult,
             "dtype": dtype, "data": data}
    source = LMSource(lm, layers, texts, ctx_len=ctx_len, lm_batch=lm_batch, norm_mult=norm_mult, dtype=dtype,
                      device="cpu")
    meta = {**fixed, "tokens": 0, "shards": [], "complete": False}
    if (folder / "meta.json").is_file():
        old = read_cache_meta(folder)
        diff = [key for key, value in fixed.items() if key != "data" and old.get(key) != value]
        if diff:
            raise QScopeError(f"{folder}: an existing cache was built with other settings ({', '.join(diff)}); "
                              "use another folder")
        meta = old
        if old.get("source"):
            source.load_state_dict(old["source"])
        if old["tokens"] >= total_tokens:
            return old
    buf: list[Chunk] = []
    have = 0
    while meta["tokens"] < total_tokens:
        chunk = source.next_chunk()
        if chunk is not None:
            buf.append(chunk)
            have += int(chunk[layers[0]].shape[0])
        left = total_tokens - meta["tokens"]
        if have >= min(shard_tokens, left) or (chunk is None and have):
            # A shard takes every buffered token (only the last one is cut at total_tokens), so
            # the source state saved next describes exactly what the shards hold.
            shard = {layer: torch.cat([c[layer] for c in buf])[:left] for layer in layers}
            name = SHARD_PATTERN.format(len(meta["shards"]))
            count = write_shard(folder / name, shard, store_dtype(dtype))
            buf, have = [], 0
            meta["shards"].append({"file": name, "tokens": count})
            meta["tokens"] += count
            meta["source"] = source.state_dict()
            meta["complete"] = meta["tokens"] >= total_tokens
            write_json(folder / "meta.json", meta)
            if progress:
                progress(meta["tokens"], total_tokens)
        if chunk is None:
            break
    meta["complete"] = True
    write_json(folder / "meta.json", meta)
    return meta


# --------------------------------------------------------------------------- shuffle buffer


class ActivationStore:
    """Shuffled float32 batches {layer: (batch_size, d_model)} from a source.

    Tokens from the source are kept in a buffer of about `buffer_tokens` rows (in the store
    dtype, on `device`); when it falls below half, it is topped up and permuted with a seeded
    generator, then batches are taken from its end. The buffer's contents, the generator and
    the source position form `state_dict()`: restoring it reproduces the same batches.
    """

    def __init__(self, source, batch_size: int, buffer_tokens: int = 65536, seed: int = 0,
                 device: torch.device | str = "cpu"):
        buffer_tokens = max(buffer_tokens, 2 * batch_size)
        self.source = source
        self.layers = list(source.layers)
        self.batch_size, self.capacity = int(batch_size), int(buffer_tokens)
        self.device = torch.device(device)
        self.gen = torch.Generator().manual_seed(seed)
        self.rows: dict[int, Tensor] = {}
        self.n = 0
        self.exhausted = False

    @classmethod
    def from_lm(cls, lm: LM, layers: Sequence[int], texts: Texts, batch_size: int = 4096, ctx_len: int = 256,
                lm_batch: int = 32, norm_mult: float = 10.0, buffer_tokens: int = 65536, seed: int = 0,
                device: torch.device | str | None = None, dtype: str = "float16", rank: int = 0,
                world: int = 1) -> ActivationStore:
        device = device if device is not None else lm.device
        source = LMSource(lm, layers, texts, ctx_len=ctx_len, lm_batch=lm_batch, norm_mult=norm_mult, rank=rank,
                          world=world, dtype=dtype, device=device)
        return cls(source, batch_size, buffer_tokens, seed=seed, device=device)

    @classmethod
    def from_cache(cls, folder: str | Path, layers: Sequence[int] | None = None, batch_size: int = 4096,
                   buffer_tokens: int = 65536, seed: int = 0, epochs: int | None = None,
                   device: torch.device | str = "cpu", rank: int = 0, world: int = 1,
                   shards: Sequence[str] | None = None) -> ActivationStore:
        source = CacheSource(folder, layers, seed=seed, epochs=epochs, rank=rank, world=world, shards=shards,
                             device=device)
        return cls(source, batch_size, buffer_tokens, seed=seed, device=device)

    @property
    def d_model(self) -> int:
        return self.source.d_model

    def __iter__(self) -> ActivationStore:
        return self

    def __next__(self) -> dict[int, Tensor]:
        if self.n < self.capacity // 2 and not self.exhausted:
            self._refill()
        if self.n < self.batch_size:
            raise StopIteration
        start = self.n - self.batch_size
        batch = {layer: rows[start:self.n].float() for layer, rows in self.rows.items()}
        self.n = start
        return batch

    def _refill(self) -> None:
        parts: dict[int, list[Tensor]] = {layer: [self.rows[layer][:self.n]] if self.rows else [] for layer in self.layers}
        n = self.n
        while n < self.capacity:
            chunk = self.source.next_chunk()
            if chunk is None:
                self.exhausted = True
                break
            for layer in self.layers:
                parts[layer].append(chunk[layer].to(self.device))
            n += int(chunk[self.layers[0]].shape[0])
        if n == self.n:
            return
        perm = torch.randperm(n, generator=self.gen).to(self.device)
        self.rows = {layer: torch.cat(parts[layer]).index_select(0, perm) for layer in self.layers}
        self.n = n

    @property
    def stats(self) -> dict:
        return self.source.stats

    def state_dict(self) -> dict:
        return {"rows": {str(layer): rows[:self.n].detach().cpu().clone() for layer, rows in self.rows.items()},
                "n": self.n, "gen": self.gen.get_state(), "exhausted": self.exhausted,
                "source": self.source.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.rows = {int(layer): rows.to(self.device) for layer, rows in state["rows"].items()}
        self.n = int(state["n"])
        self.gen.set_state(state["gen"])
        self.exhausted = bool(state["exhausted"])
        self.source.load_state_dict(state["source"])
