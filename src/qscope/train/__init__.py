"""Training TopK SAEs: activation store, training math, trainer, checkpoints (see `qscope train`).

- `store`: texts -> LM residuals (filtered, packed, shuffled) or an on-disk activation cache.
- `topk`: the TopK/AuxK step with an O(N k D) sparse backward.
- `trainer`: `TrainConfig` and the `Trainer` loop (metrics, DDP, resume).
- `checkpoint`: atomic checkpoints and the resumable metrics log.
"""

from .checkpoint import MetricsLog, has_checkpoint, load_checkpoint, save_checkpoint
from .store import ActivationStore, CacheSource, LMSource, build_cache, read_cache_meta, write_cache
from .topk import TopKTrainer, auxk_loss, default_lr, fvu, lr_at, sparse_decode, sparse_encode
from .trainer import TrainConfig, TrainProgress, Trainer, evaluate_saes, init_distributed, parse_count, parse_layers, train

__all__ = [
    "ActivationStore",
    "CacheSource",
    "LMSource",
    "MetricsLog",
    "TopKTrainer",
    "TrainConfig",
    "TrainProgress",
    "Trainer",
    "auxk_loss",
    "build_cache",
    "default_lr",
    "evaluate_saes",
    "fvu",
    "has_checkpoint",
    "init_distributed",
    "load_checkpoint",
    "lr_at",
    "parse_count",
    "parse_layers",
    "read_cache_meta",
    "save_checkpoint",
    "sparse_decode",
    "sparse_encode",
    "train",
    "write_cache",
]
