"""Classify a large corpus with a feature classifier: streaming and resumable, or on Ray Data.

Streaming: texts are read lazily, encoded in chunks, and each chunk's results are appended to
a JSONL file; `<out>.progress.json` records how many texts and bytes are final, so a killed run
resumes exactly there (a torn last line is cut off). Ray: an actor pool where each actor holds
its own model + SAEs (`ray.data.from_items(...).map_batches(Classifier, compute=ActorPoolStrategy)`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from ..errors import QScopeError
from ..io import write_json
from .cache import encode_examples
from .classify import FeatureClassifier

if TYPE_CHECKING:
    from ..model import LM
    from ..sae import SAE

Loader = Callable[[], tuple]  # () -> (lm, {layer: SAE}); must pickle for Ray


@dataclass
class CorpusResult:
    out: str
    texts: int
    positives: int
    resumed_from: int
    seconds: float
    backend: str = "stream"

    def to_dict(self) -> dict:
        return asdict(self)


def _rows(clf: FeatureClassifier, codes, indices: list[int], texts: list[str], keep_text: bool) -> list[dict]:
    fired = clf.fired(codes)
    rows = []
    for i, row in enumerate(fired):
        rec = {
            "index": indices[i],
            "label": bool(row.any()),
            "fired": [[f.layer, f.feature] for f, on in zip(clf.features, row) if on],
        }
        if keep_text:
            rec["text"] = texts[i]
        rows.append(rec)
    return rows


def _clf_id(clf: FeatureClassifier) -> str:
    return hashlib.sha1(json.dumps([[f.layer, f.feature] for f in clf.features]).encode()).hexdigest()[:12]


def _progress_path(out: Path) -> Path:
    return out.with_name(out.name + ".progress.json")


def classify_stream(
    lm: LM,
    saes: dict[int, SAE],
    clf: FeatureClassifier,
    texts: Iterable[str],
    out: str | Path,
    chunk: int = 64,
    batch_size: int = 16,
    max_length: int = 128,
    keep_text: bool = False,
    progress: Callable[[int], None] | None = None,
    limit: int | None = None,
) -> CorpusResult:
    """Classify `texts` into JSONL `out` (one {"index", "label", "fired"} per text), resuming
    from `<out>.progress.json` when it exists for the same classifier."""
    missing = [l for l in clf.layers if l not in saes]
    if missing:
        raise QScopeError(f"the classifier reads layer {missing[0]}; no SAE given for it (have {sorted(saes)})")
    saes = {l: saes[l] for l in clf.layers}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {"done": 0, "bytes": 0, "positives": 0, "classifier": _clf_id(clf)}
    ppath = _progress_path(out)
    if ppath.exists() and out.exists():
        saved = json.loads(ppath.read_text(encoding="utf-8"))
        if saved.get("classifier") != state["classifier"]:
            raise QScopeError(
                f"{out}: has progress from another classifier; remove {ppath.name} and the output to restart"
            )
        state = saved
    resumed = state["done"]
    start = time.time()
    with open(out, "ab") as fh:
        fh.truncate(state["bytes"])  # drop anything written after the last recorded chunk
        fh.seek(state["bytes"])
        stream: Iterator[str] = islice(iter(texts), resumed, limit)
        index = resumed
        while batch := list(islice(stream, chunk)):
            codes = encode_examples(lm, saes, batch, max_length, batch_size)
            rows = _rows(clf, codes, list(range(index, index + len(batch))), batch, keep_text)
            fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
            index += len(batch)
            state.update(done=index, bytes=fh.tell(), positives=state["positives"] + sum(r["label"] for r in rows))
            write_json(ppath, state)
            if progress:
                progress(len(batch))
    return CorpusResult(str(out), state["done"], state["positives"], resumed, time.time() - start)


# ------------------------------------------------------------------------- Ray Data
def given(*objects):
    """A picklable loader that returns objects built in the driver (small models, tests)."""
    return objects


def load_default(model: str, sae: str, layers: tuple[int, ...]) -> tuple[LM, dict[int, SAE]]:
    """Loader used by the CLI: each Ray actor loads the model and the SAEs itself."""
    from ..model import load

    return tuple(load(model, sae, list(layers)))


class RayClassifier:
    """Ray Data callable class: holds one model + SAEs per actor, classifies pandas batches."""

    def __init__(
        self,
        load: Loader,
        classifier: dict,
        max_length: int = 128,
        batch_size: int = 16,
        keep_text: bool = False,
        threads: int = 1,
    ):
        import torch

        torch.set_num_threads(threads)
        self.lm, saes = load()
        self.clf = FeatureClassifier.from_dict(classifier)
        self.saes = {l: saes[l] for l in self.clf.layers}
        self.max_length, self.batch_size, self.keep_text = max_length, batch_size, keep_text

    def __call__(self, batch: dict) -> dict:
        texts = [str(t) for t in batch["text"]]
        codes = encode_examples(self.lm, self.saes, texts, self.max_length, self.batch_size)
        rows = _rows(self.clf, codes, [int(i) for i in batch["index"]], texts, self.keep_text)
        return {
            "index": [r["index"] for r in rows],
            "label": [r["label"] for r in rows],
            "fired": [json.dumps(r["fired"]) for r in rows],
            **({"text": texts} if self.keep_text else {}),
        }


def ray_available() -> str | None:
    """None if Ray Data can be imported, else the reason it cannot."""
    try:
        import ray  # noqa: F401
        from ray.data import ActorPoolStrategy  # noqa: F401
    except ImportError as exc:
        return f"ray[data] is not installed ({exc}); pip install 'ray[data]'"
    return None


def classify_ray(
    load: Loader,
    clf: FeatureClassifier,
    texts: Iterable[str],
    out: str | Path,
    actors: int = 2,
    batch_size: int = 16,
    max_length: int = 128,
    keep_text: bool = False,
    progress: Callable[[int], None] | None = None,
    limit: int | None = None,
) -> CorpusResult:
    """Classify with a Ray Data actor pool (`actors` model replicas); writes JSONL `out` sorted
    by index. Starts a local Ray (all CPUs) unless one is running already. Not resumable."""
    reason = ray_available()
    if reason:
        raise QScopeError(reason)
    import ray
    from ray.data import ActorPoolStrategy

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    start = time.time()
    items = [{"index": i, "text": t} for i, t in enumerate(islice(iter(texts), limit))]
    if not items:
        raise QScopeError("no texts to classify")
    ds = ray.data.from_items(items).map_batches(
        RayClassifier,
        fn_constructor_kwargs=dict(
            load=load, classifier=clf.to_dict(), max_length=max_length, batch_size=batch_size, keep_text=keep_text
        ),
        compute=ActorPoolStrategy(size=actors),
        batch_size=batch_size * 4,
        num_cpus=1,
        batch_format="numpy",
    )
    rows = []
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for i in range(len(batch["index"])):
            rec = {
                "index": int(batch["index"][i]),
                "label": bool(batch["label"][i]),
                "fired": json.loads(batch["fired"][i]),
            }
            if keep_text:
                rec["text"] = str(batch["text"][i])
            rows.append(rec)
        if progress:
            progress(len(batch["index"]))
    rows.sort(key=lambda r: r["index"])
    from ..io import atomic_path

    with atomic_path(out) as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return CorpusResult(
        str(out), len(rows), sum(r["label"] for r in rows), 0, time.time() - start, backend=f"ray x{actors}"
    )


def default_loader(model: str, sae: str, layers) -> Loader:
    return functools.partial(load_default, model, sae, tuple(layers))
