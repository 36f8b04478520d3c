"""SAE quality on held-out text: reconstruction, sparsity, dead features, and LM cost.

`evaluate_sae(lm, sae, texts)` runs the model over `texts` three times per batch:

* clean: the plain forward (reference next-token distributions and CE loss);
* spliced: the SAE's layer output `h` replaced by `sae(h)` (reconstruction statistics are
  taken from this pass: `h` there equals the clean `h`, since nothing before the layer changes);
* zero-ablated: the same positions of the layer's residual replaced by zeros.

Which tokens count. Padding never does. Position 0 does not either (`skip_first=True`): Qwen
models put an attention sink there, with residual norms over 100x the median, which would
dominate FVU; SAEs are trained without it. The splice and the zero-ablation touch exactly the
counted positions, so position 0 stays clean in both and every sequence keeps its sink.
CE and KL are read at counted positions t (the distribution over token t+1, computed after
the edit at positions <= t); CE also needs a real token at t+1. With `norm_mult`, tokens whose
residual norm exceeds `norm_mult` x the batch's median norm are dropped from the
reconstruction statistics too (not from the splice, nor from CE/KL); the result says how many.

Definitions (sums over counted tokens):

* FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2, explained variance = 1 - FVU;
* L0 = mean number of non-zero features per token;
* dead fraction = features that never fired on these tokens (a statement about this sample:
  with few tokens, rare features look dead);
* CE loss recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean): 1 = as good as the clean
  model, 0 = no better than deleting the layer's residual;
* KL = mean over positions of KL(p_clean || p_spliced), in nats.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
import torch.nn.functional as F

from .errors import QScopeError
from .model import hooks

if TYPE_CHECKING:
    from .model import LM
    from .sae import SAE

# Density bins of the firing-density histogram: [lo, hi) in fraction of counted tokens.
DENSITY_EDGES = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)

# A few varied texts: the fallback when no held-out corpus is available.
SAMPLE_TEXTS = [
    "The river had risen overnight, and by morning the low fields were a sheet of brown water. "
    "Farmers stood at the edge of the road, counting what they had lost and what might still be saved.",
    "To install the package, create a virtual environment, activate it, and run pip install with the "
    "name of the project. If the build fails, check that a compiler is available on your path.",
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n"
    "print([fibonacci(i) for i in range(10)])",
    "Photosynthesis converts light energy into chemical energy. In the chloroplasts, water is split, "
    "oxygen is released, and carbon dioxide is fixed into sugars through the Calvin cycle.",
    "She opened the letter slowly, as if the words inside might change while she was not looking. "
    "It was short: three lines, a date, and a name she had not heard in twenty years.",
    "The committee approved the budget after a long debate over transport funding. Opponents argued "
    "that the new rail line would serve too few people to justify its cost.",
    "SELECT customer_id, COUNT(*) AS orders FROM orders WHERE created_at >= '2024-01-01' "
    "GROUP BY customer_id HAVING COUNT(*) > 5 ORDER BY orders DESC;",
    "If x + 3 = 7, then x = 4. More generally, to solve a linear equation, isolate the unknown by "
    "applying the same operation to both sides until it stands alone.",
    "Der Zug nach Berlin hatte zwanzig Minuten Verspätung, und die Reisenden warteten geduldig "
    "auf dem Bahnsteig, während es leise zu regnen begann.",
    "今天天气很好，我们去公园散步。公园里有很多人在放风筝，孩子们在草地上跑来跑去。",
    "Dear team, thank you for your hard work this quarter. We shipped the new search feature on time "
    "and customer feedback has been very positive. Let's keep the momentum going.",
    "The mitochondrion is often called the powerhouse of the cell, because it produces most of the "
    "cell's supply of adenosine triphosphate, the molecule that stores and transfers energy.",
    "Q: What is the capital of Australia?\nA: The capital of Australia is Canberra, not Sydney, "
    "although Sydney is the largest city.",
    "const total = items.reduce((sum, item) => sum + item.price * item.quantity, 0);\n"
    "console.log(`Total: ${total.toFixed(2)}`);",
    "In 1969, the Apollo 11 mission landed the first humans on the Moon. Neil Armstrong and Buzz "
    "Aldrin spent about two and a half hours walking on the surface.",
    "Preheat the oven to 180 degrees. Mix the flour, sugar and butter until the texture resembles "
    "breadcrumbs, then add the eggs one at a time and stir until smooth.",
]


@dataclass
class SAEEvalResult:
    """What `evaluate_sae` measured; `to_dict()` is JSON-ready (`densities` is left out)."""

    sae: str
    model: str
    layer: int
    d_model: int
    d_sae: int
    activation: str
    k: int | None
    n_texts: int
    n_tokens: int  # tokens in the reconstruction statistics
    n_tokens_real: int  # real (non-pad) tokens seen, position 0 included
    n_skipped_first: int  # position-0 tokens left out (0 with skip_first=False)
    n_filtered: int  # tokens dropped by the extreme-norm filter
    norm_mult: float | None
    median_norm: float  # median residual norm of counted tokens (mean of per-batch medians)
    fvu: float
    explained_variance: float
    mse: float  # mean over tokens of ||x - x_hat||^2
    cosine: float  # mean cosine similarity of x and x_hat
    l0: float
    n_dead: int
    dead_fraction: float
    density_hist: list[dict[str, Any]]
    density_quantiles: dict[str, float]  # log10 firing density of live features
    n_ce_tokens: int  # positions in CE (counted positions with a real next token)
    n_kl_tokens: int
    ce_clean: float
    ce_sae: float
    ce_zero: float
    ce_recovered: float
    kl: float
    position0_clean: bool
    seconds: float
    densities: torch.Tensor | None = field(default=None, repr=False)  # (d_sae,) per-feature firing density

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("densities")
        return {key: (None if isinstance(v, float) and not math.isfinite(v) else v) for key, v in out.items()}


class _Moments:
    """Running mean and sum of squared deviations of vectors (Chan's merge, float64): the FVU
    denominator without the cancellation of `sum x^2 - n mean^2`."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: torch.Tensor | None = None
        self.m2 = 0.0

    def add(self, x: torch.Tensor) -> None:
        if x.shape[0] == 0:
            return
        x = x.double()
        n_b = x.shape[0]
        mean_b = x.mean(0)
        m2_b = float(((x - mean_b) ** 2).sum())
        if self.mean is None:
            self.n, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n = self.n + n_b
        delta = mean_b - self.mean
        self.m2 += m2_b + float((delta**2).sum()) * self.n * n_b / n
        self.mean = self.mean + delta * (n_b / n)
        self.n = n


def _reconstruct(sae: SAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_hat, per-token L0, per-feature firing counts) for a flat (n, d_model) batch.

    A feature fires when its code is non-zero. TopK SAEs decode sparsely from their k kept
    features (a kept value that ReLU made 0 does not fire); others go through the dense code."""
    d_sae = sae.cfg.d_sae
    if sae.cfg.activation == "topk":
        values, indices = sae.encode_topk(x)
        x_hat = sae.decode_sparse(values, indices)
        on = values > 0
        counts = torch.bincount(indices[on].flatten(), minlength=d_sae)
        return x_hat, on.sum(-1), counts
    codes = sae.encode(x)
    on = codes != 0
    return sae.decode(codes), on.sum(-1), on.sum(0)


def _norm_keep(norms: torch.Tensor, norm_mult: float | None) -> tuple[torch.Tensor, float]:
    """Mask of tokens kept by the extreme-norm filter (norm <= norm_mult x median) and the median."""
    if norms.numel() == 0:
        return torch.ones_like(norms, dtype=torch.bool), float("nan")
    median = float(norms.median())
    if norm_mult is None:
        return torch.ones_like(norms, dtype=torch.bool), median
    return norms <= norm_mult * median, median


def _density_summary(counts: torch.Tensor, n_tokens: int) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Histogram of per-feature firing density in decades, and log10-density quantiles of live features."""
    density = counts.double() / max(n_tokens, 1)
    edges = (0.0, *DENSITY_EDGES, math.inf)
    hist = [{"range": "dead", "count": int((counts == 0).sum())}]
    for lo, hi in zip(edges[:-1], edges[1:]):
        n = int(((density > lo) & (density < hi) if lo == 0 else (density >= lo) & (density < hi)).sum())
        label = f"<{hi:g}" if lo == 0 else (f">={lo:g}" if hi == math.inf else f"{lo:g}-{hi:g}")
        hist.append({"range": label, "count": n})
    live = density[counts > 0]
    quantiles: dict[str, float] = {}
    if live.numel():
        logs = live.log10()
        for q in (0.1, 0.5, 0.9):
            quantiles[f"p{int(q * 100)}"] = round(float(logs.quantile(q)), 3)
        quantiles["max"] = round(float(logs.max()), 3)
    return hist, quantiles


def _resolve_layer(lm: LM, sae: SAE, layer: int | None) -> int:
    if layer is None:
        layer = sae.cfg.layer
    if layer is None:
        raise QScopeError("the SAE does not say which layer it reads: pass a layer")
    layer = lm.check_layers([layer])[0]
    if sae.cfg.d_model != lm.d_model:
        raise QScopeError(f"SAE d_model {sae.cfg.d_model} does not match {lm.name}'s hidden size {lm.d_model}")
    return layer


@torch.no_grad()
def evaluate_sae(lm: LM, sae: SAE, texts: Sequence[str], layer: int | None = None, max_length: int = 256,
                 batch_size: int = 8, skip_first: bool = True, norm_mult: float | None = None,
                 progress: Callable[[int, int], None] | None = None) -> SAEEvalResult:
    """Measure `sae` on `lm`'s residual stream at `layer` (default: the SAE's own) over `texts`.

    See the module docstring for which tokens count and how each number is defined.
    `progress(done, total)` is called with the number of batches done, before the first and
    after each one (a progress display; the CLI draws a bar).
    """
    start_time = time.time()
    layer = _resolve_layer(lm, sae, layer)
    texts = [t for t in ([texts] if isinstance(texts, str) else list(texts)) if isinstance(t, str) and t.strip()]
    if not texts:
        raise QScopeError("no non-empty text to evaluate on")
    if norm_mult is not None and norm_mult <= 0:
        raise QScopeError(f"norm_mult must be positive, got {norm_mult}")
    # Longest first: batches of similar length waste little on padding (only the per-batch
    # median of the norm filter depends on how texts are batched).
    texts = sorted(texts, key=len, reverse=True)
    sae_device = sae.W_enc.device

    moments = _Moments()
    sse = 0.0
    cos_sum = 0.0
    l0_sum = 0
    counts = torch.zeros(sae.cfg.d_sae, dtype=torch.long)
    n_tokens = n_real = n_first = n_filtered = 0
    medians: list[float] = []
    ce = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    n_ce = 0
    kl_sum = 0.0
    n_kl = 0

    batches = range(0, len(texts), batch_size)
    report = progress or (lambda done, total: None)
    report(0, len(batches))
    for done, start in enumerate(batches, 1):
        enc = lm.tokenize(texts[start:start + batch_size], max_length=max_length)
        ids, real = enc["input_ids"], enc["attention_mask"].bool()
        width = int(real.sum(1).max())
        ids, real = ids[:, :width], real[:, :width]
        attn = real.long()
        counted = real.clone()
        if skip_first:
            counted[:, 0] = False
        n_real += int(real.sum())
        n_first += int(real[:, 0].sum()) if skip_first else 0
        # CE at t predicts token t+1: t counted and t+1 real.
        ce_pos = counted[:, :-1] & real[:, 1:]
        targets = ids[:, 1:][ce_pos]

        def forward(key: str, edit=None, logp: bool = True) -> torch.Tensor | None:
            """One pass, `edit` at `layer` (none: clean); adds its CE to `ce[key]` and returns the
            next-token log-probs at counted positions (if `logp`). The logits (batch x seq x vocab)
            are the biggest tensors here: each is freed before the next pass."""
            with hooks.edit(lm.layers, {layer: edit}) if edit else nullcontext():
                logits = lm.model(input_ids=ids, attention_mask=attn, use_cache=False).logits
            ce[key] += float(F.cross_entropy(logits[:, :-1][ce_pos].float(), targets, reduction="sum"))
            if not logp:
                return None
            picked = logits[counted].float()
            del logits
            return F.log_softmax(picked, dim=-1)

        # 1. clean
        logp_clean = forward("clean")

        # 2. spliced: h -> sae(h) at counted positions; statistics from the same pass.
        seen: dict[str, torch.Tensor] = {}

        def splice(h: torch.Tensor) -> torch.Tensor:
            x = h[counted].to(sae_device)
            x_hat, l0, fired = _reconstruct(sae, x)
            seen.update(x=x, x_hat=x_hat, l0=l0, fired=fired)
            out = h.clone()
            out[counted] = x_hat.to(device=h.device, dtype=h.dtype)
            return out

        logp_sae = forward("sae", splice)
        kl_sum += float(F.kl_div(logp_sae, logp_clean, log_target=True, reduction="sum"))
        n_kl += int(logp_clean.shape[0])
        del logp_clean, logp_sae

        # 3. zero-ablated at the same positions (only its CE is needed)
        def zero(h: torch.Tensor) -> torch.Tensor:
            return h.masked_fill(counted.unsqueeze(-1), 0.0)

        forward("zero", zero, logp=False)
        n_ce += int(ce_pos.sum())

        # reconstruction statistics on counted tokens (after the optional norm filter)
        if "x" not in seen:
            raise QScopeError(f"layer {layer} did not run: the edit hook never fired")
        x, x_hat = seen["x"].float(), seen["x_hat"].float()
        keep, median = _norm_keep(x.norm(dim=-1), norm_mult)
        if x.shape[0]:
            medians.append(median)
        n_filtered += int((~keep).sum())
        if not bool(keep.all()):
            x, x_hat, l0 = x[keep], x_hat[keep], seen["l0"][keep]
            # firing counts must be recomputed on the kept tokens only
            _, _, fired = _reconstruct(sae, seen["x"][keep])
        else:
            l0, fired = seen["l0"], seen["fired"]
        moments.add(x)
        sse += float(((x - x_hat).double() ** 2).sum())
        cos_sum += float(F.cosine_similarity(x, x_hat, dim=-1).double().sum()) if x.shape[0] else 0.0
        l0_sum += int(l0.sum())
        counts += fired.cpu()
        n_tokens += int(x.shape[0])
        report(done, len(batches))

    if n_tokens == 0:
        raise QScopeError("no token to evaluate on: every text is a single token (position 0 is left out)")
    nan = float("nan")
    fvu = sse / moments.m2 if moments.m2 > 0 else nan
    ce_clean, ce_sae, ce_zero = ((ce[key] / n_ce) if n_ce else nan for key in ("clean", "sae", "zero"))
    gap = ce_zero - ce_clean
    recovered = (ce_zero - ce_sae) / gap if n_ce and gap != 0 else nan
    hist, quantiles = _density_summary(counts, n_tokens)
    n_dead = int((counts == 0).sum())
    return SAEEvalResult(
        sae=repr(sae), model=lm.name, layer=layer, d_model=sae.cfg.d_model, d_sae=sae.cfg.d_sae,
        activation=sae.cfg.activation, k=sae.cfg.k, n_texts=len(texts), n_tokens=n_tokens, n_tokens_real=n_real,
        n_skipped_first=n_first, n_filtered=n_filtered, norm_mult=norm_mult,
        median_norm=sum(medians) / len(medians) if medians else nan,
        fvu=fvu, explained_variance=1.0 - fvu, mse=sse / n_tokens, cosine=cos_sum / n_tokens, l0=l0_sum / n_tokens,
        n_dead=n_dead, dead_fraction=n_dead / sae.cfg.d_sae, density_hist=hist, density_quantiles=quantiles,
        n_ce_tokens=n_ce, n_kl_tokens=n_kl, ce_clean=ce_clean, ce_sae=ce_sae, ce_zero=ce_zero,
        ce_recovered=recovered, kl=kl_sum / n_kl if n_kl else nan, position0_clean=skip_first,
        seconds=round(time.time() - start_time, 2), densities=counts.double() / n_tokens,
    )


@torch.no_grad()
def text_perplexity(lm: LM, texts: Sequence[str], max_length: int = 128, batch_size: int = 8) -> float:
    """exp(mean next-token NLL) over `texts` (each cut to `max_length` tokens): the held-out
    fluency check after fine-tuning or steering a model."""
    if not texts:
        raise QScopeError("text_perplexity needs at least one text")
    nll, n = 0.0, 0
    for i in range(0, len(texts), batch_size):
        enc = lm.tokenize(list(texts[i:i + batch_size]), max_length=max_length)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        out = lm.model(**enc, labels=labels)
        k = int((labels[:, 1:] != -100).sum())
        nll += float(out.loss) * k
        n += k
    return math.exp(nll / n)
