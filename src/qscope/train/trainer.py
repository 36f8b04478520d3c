"""`TrainConfig` + `Trainer`: TopK SAEs for several layers, side by side, from one activation store.

The loop: one store batch {layer: (batch, d_model)} per step, one `TopKTrainer.step` per
layer, metrics to `metrics.jsonl` every `log_every` steps, a checkpoint every `ckpt_every`
steps, SAEs saved at the end. Pointing a new `Trainer` at an `out_dir` with a checkpoint
resumes it (same config required, except the fields in `RESUMABLE_CHANGES`).

Under torchrun (WORLD_SIZE > 1) each rank reads its own slice of the data; `batch_size` is the
global batch (each rank takes batch_size / world); gradients are all-reduced inside
`TopKTrainer`; only rank 0 writes metrics, checkpoints and SAEs.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import QScopeError
from ..io import write_json
from ..parse import int_list
from ..provenance import record
from . import checkpoint as ckpt
from .store import ActivationStore, CacheSource, LMSource, build_cache, read_cache_meta
from .topk import TopKTrainer, default_lr, lr_at

if TYPE_CHECKING:
    from ..model import LM
    from ..sae import SAE

# Fields that may differ between a checkpoint's config and the resuming call.
RESUMABLE_CHANGES = {"total_tokens", "ckpt_every", "log_every", "device", "dtype", "save_dtype", "out_dir", "matmul"}
# Fields filled in by `TrainConfig.resolve` when left None.
DERIVED = {"d_sae", "lr", "warmup_steps", "dead_after_tokens", "k_aux"}


@dataclass
class TrainConfig:
    """Everything a training run depends on; also the CLI's config file (JSON or TOML)."""

    model: str = "default"
    layers: list[int] = field(default_factory=list)
    out_dir: str | None = None
    data: str = "mix"  # "mix" = qscope.data.training_mix(seed); else a qscope.data.iter_texts spec
    cache_dir: str | None = None  # train from this activation cache (built first if incomplete)
    expansion: int = 16
    d_sae: int | None = None  # default: expansion x d_model
    k: int = 50
    batch_size: int = 4096  # tokens per step, over all ranks
    total_tokens: int = 2_000_000
    lr: float | None = None  # default: 2e-4 / sqrt(d_sae / 2**14)
    warmup_steps: int | None = None  # default: min(1000, steps // 10)
    lr_decay_frac: float = 0.0  # linear decay to 0 over this last fraction of the steps
    auxk_alpha: float = 1 / 32
    k_aux: int | None = None  # default: d_model // 2
    dead_after_tokens: int | None = None  # default: min(10M, total_tokens // 10)
    ctx_len: int = 256
    lm_batch: int = 32  # sequences per LM forward
    norm_mult: float = 10.0
    buffer_tokens: int = 65536
    store_dtype: str = "float16"
    matmul: str = "auto"  # encoder matmul precision: auto (tf32 on CUDA, fp32 on CPU), fp32, tf32, bf16
    holdout_shards: int = 0  # with a cache: its last N shards are kept out of training, for eval
    ckpt_every: int = 200
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"  # the LM's dtype
    save_dtype: str = "float32"

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise QScopeError(f"{where}: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(names))})")
        data = dict(data)
        if "layers" in data:
            data["layers"] = parse_layers(data["layers"])
        for key in ("total_tokens", "batch_size", "dead_after_tokens", "buffer_tokens"):
            if isinstance(data.get(key), str):
                data[key] = parse_count(data[key])
        _check_types(cls, data, where)
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        """Read a JSON (`.json`) or TOML (`.toml`) file of TrainConfig fields."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise QScopeError(f"{path}: cannot read config ({exc.strerror})") from None
        if path.suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                raise QScopeError(f"{path}: TOML configs need Python 3.11+; use JSON") from None
            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise QScopeError(f"{path}: not valid TOML ({exc})") from None
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise QScopeError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise QScopeError(f"{path}: expected a table/object of config fields")
        return cls.from_dict(data, where=str(path))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def replace(self, **changes) -> TrainConfig:
        return replace(self, **changes)

    # ------------------------------------------------------------------ derived values
    @property
    def steps(self) -> int:
        return max(1, self.total_tokens // self.batch_size)

    def resolve(self, d_model: int) -> TrainConfig:
        """Fill every None default from d_model and the run length, then check the values."""
        d_sae = self.d_sae or self.expansion * d_model
        steps = self.steps
        cfg = replace(
            self, d_sae=d_sae, lr=self.lr if self.lr is not None else default_lr(d_sae),
            warmup_steps=self.warmup_steps if self.warmup_steps is not None else min(1000, steps // 10),
            dead_after_tokens=self.dead_after_tokens if self.dead_after_tokens is not None
            else min(10_000_000, max(self.batch_size, self.total_tokens // 10)),
            k_aux=self.k_aux if self.k_aux is not None else max(1, d_model // 2))
        cfg.check()
        return cfg

    def check(self) -> None:
        if not self.out_dir:
            raise QScopeError("no output folder: give out_dir (--out)")
        _check_types(TrainConfig, self.to_dict(), "config")
        if not 0 < self.k <= (self.d_sae or self.k):
            raise QScopeError(f"k must be in 1..d_sae, got k={self.k}, d_sae={self.d_sae}")
        for name in ("batch_size", "total_tokens", "ctx_len", "lm_batch", "ckpt_every", "log_every", "expansion"):
            if getattr(self, name) <= 0:
                raise QScopeError(f"{name} must be positive, got {getattr(self, name)}")
        if self.total_tokens < self.batch_size:
            raise QScopeError(f"total_tokens ({self.total_tokens}) is less than one batch ({self.batch_size})")
        for name in ("lr", "norm_mult"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise QScopeError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("auxk_alpha", "warmup_steps", "holdout_shards", "seed"):
            if getattr(self, name) is not None and not getattr(self, name) >= 0:
                raise QScopeError(f"{name} must be zero or more, got {getattr(self, name)}")
        if not 0 <= self.lr_decay_frac <= 1:
            raise QScopeError(f"lr_decay_frac must be in [0, 1], got {self.lr_decay_frac}")
        if self.matmul not in ("auto", "fp32", "tf32", "bf16"):
            raise QScopeError(f"matmul must be auto, fp32, tf32 or bf16, got {self.matmul!r}")
        if self.save_dtype not in ("float32", "float16", "bfloat16"):
            raise QScopeError(f"save_dtype must be float32, float16 or bfloat16, got {self.save_dtype!r}")


_JSON_KINDS = {"int": (int,), "float": (int, float), "str": (str,), "list[int]": (list,)}
_KIND_NAMES = {"int": "a whole number", "float": "a number", "str": "a string", "list[int]": "a list of layer numbers"}


def _check_types(cls, data: dict[str, Any], where: str) -> None:
    """Each field of `data` has its declared type (`k: "many"` fails here, naming the field)."""
    declared = {f.name: str(f.type) for f in fields(cls)}
    for name, value in data.items():
        kinds = declared[name].replace(" ", "").split("|")
        if value is None and "None" in kinds:
            continue
        allowed = tuple(t for kind in kinds for t in _JSON_KINDS.get(kind, ()))
        if allowed and (isinstance(value, bool) or not isinstance(value, allowed)):
            expected = " or ".join(_KIND_NAMES.get(k, k) for k in kinds if k != "None")
            raise QScopeError(f"{where}: field {name!r} must be {expected}, got {value!r}")


def parse_count(text: str | int) -> int:
    """'2M' -> 2_000_000, '200k' -> 200_000, '1.5B' -> 1_500_000_000, '4096' -> 4096."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMbBgG]?)\s*", str(text).replace("_", ""))
    if not m:
        raise QScopeError(f"not a count: {text!r} (examples: 4096, 200k, 2M, 1.5B)")
    scale = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}[m.group(2).lower()]
    return round(float(m.group(1)) * scale)


def parse_layers(value: str | int | Sequence[int]) -> list[int]:
    """'3,15,24' / [3, 15, 24] / 15 -> [3, 15, 24] / [15]."""
    if isinstance(value, int):
        return [value]
    if isinstance(value, str):
        return int_list(value, "layers")
    return [int(v) for v in value]


def merge_for_resume(saved: dict[str, Any], new: TrainConfig) -> TrainConfig:
    """The checkpoint's config, with `new`'s changes where allowed; refuses silent mixes."""
    out = dict(saved)
    for f in fields(TrainConfig):
        value, old = getattr(new, f.name), saved.get(f.name)
        if value is None or value == [] or value == old:
            continue
        if f.name in RESUMABLE_CHANGES:
            out[f.name] = value
        else:
            raise QScopeError(f"{new.out_dir}: the checkpoint was made with {f.name}={old!r}, not {value!r}; "
                              "resume with the same settings or use another output folder")
    return TrainConfig.from_dict(out)


# --------------------------------------------------------------------------- distributed


def init_distributed() -> tuple[int, int]:
    """(rank, world); starts the process group under torchrun (nccl on GPUs, gloo on CPU)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


# --------------------------------------------------------------------------- trainer


class TrainProgress:
    """What the training loop tells a live display, on rank 0 only. This base shows nothing;
    the CLI's live view (`qscope.cli.train`) subclasses it."""

    def start(self, total_steps: int, done_steps: int) -> None:
        """The loop begins (`done_steps` > 0 when resuming)."""

    def logged(self, row: dict) -> None:
        """A metrics row was written (the row of `metrics.jsonl`)."""

    def advance(self, step: int) -> None:
        """`step` steps are done."""

    def close(self) -> None:
        """The loop ended, normally or not."""


class Trainer:
    """Train TopK SAEs on `cfg.layers` of `cfg.model` (or from `cfg.cache_dir`).

    `lm` and `texts` override loading the model and the data spec (tests, notebooks);
    `on_step(trainer)` is called after every step (hooks for tests and custom logging);
    `progress` receives the loop's progress for a display (default: none).
    `resume`: None continues from a checkpoint if `out_dir` has one; True requires one; False
    starts afresh and refuses an `out_dir` holding an earlier run unless `overwrite`, which
    deletes that run's files once the new configuration has been checked.
    A fresh run that fails before its first checkpoint removes what it wrote.
    """

    def __init__(self, cfg: TrainConfig, lm: LM | None = None, texts=None, progress: TrainProgress | None = None,
                 on_step: Callable[[Trainer], None] | None = None, resume: bool | None = None,
                 overwrite: bool = False) -> None:
        self.cfg = cfg
        self.resume = resume
        self.overwrite = overwrite
        self.checkpointed = False  # whether this run has written a checkpoint (then a failure keeps its files)
        self.lm = lm
        self.texts = texts
        self.progress = progress
        self.on_step = on_step
        self.step = 0
        self.tokens = 0
        self.rows: list[dict] = []

    # ------------------------------------------------------------------ setup
    def _device(self, world: int) -> torch.device:
        from ..model.loading import pick_device

        device = pick_device(self.cfg.device)
        if device.type == "cuda" and world > 1 and device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return device

    def _text_factory(self, cfg: TrainConfig):
        if self.texts is not None:
            return self.texts
        spec, seed = cfg.data, cfg.seed

        def texts():
            from .. import data

            return data.training_mix(seed=seed) if spec == "mix" else data.iter_texts(spec)

        return texts

    def _load_lm(self, cfg: TrainConfig, device: torch.device) -> LM:
        if self.lm is None:
            from ..model.loading import load_model

            self.lm = load_model(cfg.model, device=str(device), dtype=cfg.dtype)
        return self.lm

    def _make_store(self, cfg: TrainConfig, device: torch.device, rank: int, world: int):
        """(store, d_model, model name, eval shards) for this rank."""
        per_rank = cfg.batch_size // world
        buffer_seed = cfg.seed * 7919 + rank
        if cfg.cache_dir:
            meta_path = Path(cfg.cache_dir) / "meta.json"
            if not (meta_path.is_file() and read_cache_meta(cfg.cache_dir).get("complete")):
                if world > 1:
                    raise QScopeError(f"{cfg.cache_dir}: cache missing or incomplete; build it first with "
                                      "`qscope train cache` (one process)")
                lm = self._load_lm(cfg, device)
                build_cache(lm, cfg.layers, self._text_factory(cfg), cfg.cache_dir, cfg.total_tokens,
                            ctx_len=cfg.ctx_len, lm_batch=cfg.lm_batch, norm_mult=cfg.norm_mult,
                            dtype=cfg.store_dtype, data=cfg.data)
            meta = read_cache_meta(cfg.cache_dir)
            files = [s["file"] for s in meta["shards"]]
            held = files[len(files) - cfg.holdout_shards:] if cfg.holdout_shards > 0 else []
            train = files[:len(files) - len(held)]
            if not train:
                raise QScopeError(f"{cfg.cache_dir}: no shard left for training after holding out {len(held)}")
            source = CacheSource(cfg.cache_dir, cfg.layers or None, seed=cfg.seed, rank=rank, world=world,
                                 shards=train, device=device)
            store = ActivationStore(source, per_rank, cfg.buffer_tokens, seed=buffer_seed, device=device)
            return store, source.d_model, meta.get("model"), held
        if not cfg.layers:
            raise QScopeError("no layers given (e.g. --layers 3,15,24)")
        lm = self._load_lm(cfg, device)
        source = LMSource(lm, cfg.layers, self._text_factory(cfg), ctx_len=cfg.ctx_len, lm_batch=cfg.lm_batch,
                          norm_mult=cfg.norm_mult, rank=rank, world=world, dtype=cfg.store_dtype, device=device)
        store = ActivationStore(source, per_rank, cfg.buffer_tokens, seed=buffer_seed, device=device)
        return store, lm.d_model, lm.name, []

    # ------------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        """Train (or resume) to `total_tokens`; save the SAEs; return the final summary."""
        from ..sae import SAE, SAEConfig

        rank, world = init_distributed()
        self.cfg.check()  # before a model is loaded: bad values fail in a second, not after minutes
        out = Path(self.cfg.out_dir)
        if rank == 0:
            ckpt.recover(out)
        _barrier(world)
        saved = self._saved_state(out)
        cfg = merge_for_resume(saved["config"], self.cfg) if saved else self.cfg
        if saved and saved.get("world", 1) != world:
            raise QScopeError(f"{out}: the checkpoint was made with {saved['world']} process(es), not {world}")
        if cfg.batch_size % world:
            raise QScopeError(f"batch_size {cfg.batch_size} is not divisible by the {world} processes")
        device = self._device(world)
        store, d_model, model_name, held = self._make_store(cfg, device, rank, world)
        layers = list(store.layers)
        cfg = cfg.replace(layers=layers).resolve(d_model)
        self.cfg, self.store = cfg, store
        self.trainers: dict[int, TopKTrainer] = {}
        for layer in layers:
            sae_cfg = SAEConfig(d_model=d_model, d_sae=cfg.d_sae, activation="topk", k=cfg.k, layer=layer,
                                model_name=model_name)
            sae = SAE.random(sae_cfg, seed=cfg.seed * 1000 + layer, device=device)
            self.trainers[layer] = TopKTrainer(sae, cfg.k, cfg.lr, cfg.auxk_alpha, cfg.k_aux, cfg.dead_after_tokens,
                                               matmul=cfg.matmul)
        log = ckpt.MetricsLog(out / "metrics.jsonl")
        elapsed0 = 0.0
        created = not out.exists()
        if saved:
            self.step, self.tokens = int(saved["step"]), int(saved["tokens"])
            for layer, trainer in self.trainers.items():
                trainer.load_state_dict(saved["layers"][str(layer)])
            store.load_state_dict(saved["store"][rank])
            ckpt.set_rng_state(saved["rng"])
            acc = {int(k): v for k, v in saved["acc"].items()}
            elapsed0 = float(saved["elapsed_s"])
            if rank == 0:
                self.rows = log.resume(self.step)
        else:
            acc = {}
        try:
            if not saved and rank == 0:
                if self.overwrite:
                    ckpt.clear_run(out)
                out.mkdir(parents=True, exist_ok=True)
                log.start()
                write_json(out / "config.json", cfg.to_dict())
            _barrier(world)
            self.model_name = model_name
            summary = self._loop(cfg, log, acc, rank, world, elapsed0)
            if held and rank == 0:
                summary["heldout"] = self.evaluate(Path(cfg.cache_dir), held, device)
            if rank == 0:
                self._save_saes(cfg, summary, out)
                write_json(out / "final.json", summary, provenance=record(seeds=cfg.seed))
            _barrier(world)
        except BaseException:
            if not saved and not self.checkpointed and rank == 0:
                _discard_run(out, created)
            raise
        return summary

    def _saved_state(self, out: Path) -> dict[str, Any] | None:
        """The checkpoint to continue from (None: a fresh run), after checking `resume`/`overwrite`."""
        exists = ckpt.has_checkpoint(out)
        if self.resume is True and not exists:
            raise QScopeError(f"{out}: no checkpoint to resume from (the run stopped before its first one); "
                              f"start it again with --out {out} --overwrite")
        if self.resume is False:
            earlier = ckpt.run_files(out)
            if earlier and not self.overwrite:
                names = ", ".join(p.name for p in earlier[:4]) + (", ..." if len(earlier) > 4 else "")
                raise QScopeError(f"{out}: holds an earlier run ({names}); pass --overwrite to replace it, "
                                  f"or --resume {out} to continue it")
            return None
        return ckpt.load_checkpoint(out) if exists else None

    def _loop(self, cfg: TrainConfig, log: ckpt.MetricsLog, acc: dict, rank: int, world: int,
              elapsed0: float) -> dict[str, Any]:
        device = next(iter(self.trainers.values())).sae.W_dec.device
        cuda = device.type == "cuda"
        total = cfg.steps
        start_time = time.perf_counter()
        window_start, window_tokens = start_time, 0
        acc = {layer: acc.get(layer) or _zero_acc() for layer in self.trainers}
        bar = self.progress if self.progress is not None and rank == 0 else TrainProgress()
        bar.start(total, self.step)
        try:
            while self.step < total:
                try:
                    batch = next(self.store)
                except StopIteration:
                    raise QScopeError(f"the activation store ran out of data at step {self.step}") from None
                if self.step == 0:
                    for layer, trainer in self.trainers.items():
                        trainer.init_from_batch(batch[layer])
                lr = lr_at(self.step, cfg.lr, total, cfg.warmup_steps, cfg.lr_decay_frac)
                for layer, trainer in self.trainers.items():
                    t0 = time.perf_counter()
                    stats = trainer.step(batch[layer], lr)
                    if cuda:
                        torch.cuda.synchronize(device)
                    a = acc[layer]
                    # Summed on the device; read back (one sync) only when a row is logged.
                    part = torch.stack([stats["loss"], stats["fvu"], stats["auxk"], stats["l0"]]).double()
                    a["sums"] = part if a.get("sums") is None else a["sums"].to(part.device) + part
                    a["time"] += time.perf_counter() - t0
                    a["n"] += 1
                self.step += 1
                self.tokens += cfg.batch_size
                window_tokens += cfg.batch_size
                if self.step % cfg.log_every == 0 or self.step == total:
                    now = time.perf_counter()
                    row = self._row(acc, lr, elapsed0 + now - start_time, window_tokens / max(now - window_start, 1e-9),
                                    world)
                    window_start, window_tokens = now, 0
                    acc = {layer: _zero_acc() for layer in self.trainers}
                    if rank == 0:
                        log.append(row)
                        self.rows.append(row)
                    bar.logged(row)
                if self.step % cfg.ckpt_every == 0 or self.step == total:
                    self._checkpoint(cfg, acc, elapsed0 + time.perf_counter() - start_time, rank, world)
                bar.advance(self.step)
                if self.on_step is not None:
                    self.on_step(self)
        finally:
            bar.close()
        wall = elapsed0 + time.perf_counter() - start_time
        last = self.rows[-1] if self.rows else {}
        return {"out_dir": cfg.out_dir, "model": self.model_name, "steps": self.step, "tokens": self.tokens,
                "wall_s": round(wall, 2), "tokens_per_s": round(self.tokens / max(wall, 1e-9), 1),
                "layers": last.get("layers", {}), "store": last.get("store", {}), "lr": cfg.lr, "seed": cfg.seed,
                "data": cfg.cache_dir or ("<texts given to Trainer>" if self.texts is not None else cfg.data),
                "world": world}

    def _row(self, acc: dict, lr: float, elapsed: float, tokens_per_s: float, world: int) -> dict:
        layers = {}
        for layer, a in acc.items():
            n = max(a["n"], 1)
            means = (_acc_sums(a) / n).cpu()
            if world > 1:
                import torch.distributed as dist

                means = means.to(self.trainers[layer].since_fired.device)
                dist.all_reduce(means)
                means = (means / world).cpu()
            trainer = self.trainers[layer]
            layers[str(layer)] = {
                "loss": round(float(means[0]), 6), "fvu": round(float(means[1]), 6), "auxk": round(float(means[2]), 6),
                "l0": round(float(means[3]), 3), "dead": round(trainer.dead_fraction(), 6),
                "tokens_per_s": round(self.cfg.batch_size * n / max(a["time"], 1e-9), 1)}
        stats = {k: v for k, v in self.store.stats.items()}
        return {"step": self.step, "tokens": self.tokens, "lr": lr, "elapsed_s": round(elapsed, 3),
                "tokens_per_s": round(tokens_per_s, 1), "layers": layers, "store": stats}

    def _checkpoint(self, cfg: TrainConfig, acc: dict, elapsed: float, rank: int, world: int) -> None:
        store_state = self.store.state_dict()
        if world > 1:
            import torch.distributed as dist

            states = [None] * world if rank == 0 else None
            dist.gather_object(store_state, states, dst=0)
        else:
            states = [store_state]
        if rank == 0:
            ckpt.save_checkpoint(cfg.out_dir, {
                "step": self.step, "tokens": self.tokens, "config": cfg.to_dict(), "world": world,
                "layers": {str(layer): t.state_dict() for layer, t in self.trainers.items()},
                "store": states, "rng": ckpt.rng_state(), "acc": {str(k): {**v, "sums": _acc_sums(v).cpu()} for k, v in acc.items()},
                "elapsed_s": elapsed})
            self.checkpointed = True  # from here on, a failure leaves a run that --resume continues
        _barrier(world)

    def _save_saes(self, cfg: TrainConfig, summary: dict, out: Path) -> None:
        dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[cfg.save_dtype]
        paths = {}
        for layer, trainer in self.trainers.items():
            facts = summary["layers"].get(str(layer), {})
            trainer.sae.cfg.metadata = {
                "trainer": "qscope", "tokens": self.tokens, "steps": self.step, "final_fvu": facts.get("fvu"),
                "final_l0": facts.get("l0"), "final_dead": facts.get("dead"), "data": summary["data"], "lr": cfg.lr,
                "seed": cfg.seed, "batch_size": cfg.batch_size, "k_aux": cfg.k_aux, "auxk_alpha": cfg.auxk_alpha,
                "dead_after_tokens": cfg.dead_after_tokens, "ctx_len": cfg.ctx_len, "norm_mult": cfg.norm_mult,
                "wall_s": summary["wall_s"], "world": summary["world"],
                **({"heldout_fvu": summary["heldout"][str(layer)]["fvu"]} if "heldout" in summary else {})}
            paths[str(layer)] = str(trainer.sae.save(out / f"layer{layer}", dtype=dtype))
        summary["saved"] = paths

    @torch.no_grad()
    def evaluate(self, cache_dir: Path, shards: Sequence[str], device: torch.device,
                 max_tokens: int = 1 << 20) -> dict[str, dict[str, float]]:
        """FVU and L0 of each SAE on cache shards kept out of training."""
        source = CacheSource(cache_dir, list(self.trainers), shards=shards, epochs=1, device=device)
        return evaluate_saes({layer: t.sae for layer, t in self.trainers.items()}, source, max_tokens)


def evaluate_saes(saes: dict[int, SAE], source, max_tokens: int = 1 << 20, batch: int = 8192) -> dict[str, dict[str,
                  float]]:
    """FVU (pooled over all evaluated tokens) and mean L0 of {layer: SAE} on a source's chunks."""
    err = {layer: 0.0 for layer in saes}
    l0 = {layer: 0.0 for layer in saes}
    sx: dict[int, torch.Tensor] = {}
    sxx = {layer: 0.0 for layer in saes}
    seen = 0
    while seen < max_tokens:
        chunk = source.next_chunk()
        if chunk is None:
            break
        n = min(int(next(iter(chunk.values())).shape[0]), max_tokens - seen)
        for layer, sae in saes.items():
            for i in range(0, n, batch):
                x = chunk[layer][i:min(i + batch, n)].to(sae.W_dec.device, torch.float32)
                vals, idx = sae.encode_topk(x)
                err[layer] += float((x - sae.decode_sparse(vals, idx)).pow(2).sum())
                l0[layer] += float((vals > 0).sum())
                sx[layer] = sx.get(layer, 0) + x.double().sum(0)
                sxx[layer] += float(x.double().pow(2).sum())
        seen += n
    out = {}
    for layer in saes:
        if seen:
            var = sxx[layer] - float((sx[layer] ** 2).sum()) / seen
            out[str(layer)] = {"fvu": round(err[layer] / max(var, 1e-12), 6), "l0": round(l0[layer] / seen, 3),
                               "tokens": seen}
    return out


def _discard_run(out: Path, created: bool) -> None:
    """Remove what a fresh run wrote before failing (its config and metrics; the folder if it made it)."""
    for name in ("metrics.jsonl", "config.json"):
        (out / name).unlink(missing_ok=True)
    if created and out.is_dir() and not any(out.iterdir()):
        out.rmdir()


def _zero_acc() -> dict[str, Any]:
    """Per-layer metric sums since the last row: (loss, fvu, auxk, l0) summed over steps."""
    return {"sums": None, "time": 0.0, "n": 0}


def _acc_sums(acc: dict) -> torch.Tensor:
    sums = acc.get("sums")
    return torch.zeros(4, dtype=torch.float64) if sums is None else sums.detach().double()


def train(cfg: TrainConfig, **kwargs) -> dict[str, Any]:
    """Run (or resume) `cfg`; keyword arguments go to `Trainer`."""
    return Trainer(cfg, **kwargs).run()


__all__ = ["TrainConfig", "TrainProgress", "Trainer", "evaluate_saes", "init_distributed", "parse_count", "parse_layers",
           "train"]
