"""`qscope posttrain`: choose language / repetition features, SASFT, SAE-guided GRPO."""

from __future__ import annotations

import json as _json
from pathlib import Path
from typing import Callable, Optional, TypeVar

import typer

from ..parse import int_list
from .common import JsonOpt, ModelOpt, SaeOpt, console, emit_json, load_models, read_texts

T = TypeVar("T")

app = typer.Typer(help="SAE-guided post-training: SASFT against code-switching, SAE-guided GRPO against repetition.",
                  no_args_is_help=True)
features_app = typer.Typer(help="Choose the features that SASFT / SAE-guided GRPO use.", no_args_is_help=True)
app.add_typer(features_app, name="features")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="posttrain")


def _texts_by_lang(spec: str, limit: int) -> dict[str, list[str]]:
    """A corpus name/file whose records carry `lang` (e.g. 'multilingual'), or lang=spec,lang=spec."""
    from ..data import texts_by_language

    if "=" in spec:
        return {k: read_texts(v, limit) for k, v in (item.split("=", 1) for item in spec.split(","))}
    return texts_by_language(spec, limit)


@features_app.command("language")
def language_cmd(
    lang: str = typer.Argument(..., help="The unwanted language, e.g. zh."),
    texts: str = typer.Option("multilingual", help="Corpus/jsonl with a `lang` field, or 'zh=chinese,en=brown'."),
    model: ModelOpt = "default",
    sae: SaeOpt = "default",
    layers: str = typer.Option("24", help="Comma-separated layers (two adjacent late layers in the paper)."),
    top: int = typer.Option(2, min=1, help="Features per layer."),
    limit: int = typer.Option(40, min=1, help="Texts per language."),
    out: Optional[Path] = typer.Option(None, help="Write the features + alphas JSON here (input of `posttrain sasft`)."),
    json: JsonOpt = False,
) -> None:
    """Language features by monolinguality (mean act on LANG - mean on the others) and their alphas
    (mean pre-activation on the other languages' texts that have no LANG in them). Give selection
    texts only, never the ones you evaluate on.

    Example: qscope posttrain features language zh --texts zh=chinese,en=brown --layers 24 --out zh.json
    """
    from ..posttrain import choose_language_features

    by_lang = _texts_by_lang(texts, limit)
    lm, saes = load_models(model, sae, int_list(layers, "--layers"))
    with console.status("monolinguality and alphas"):
        chosen = choose_language_features(lm, saes, by_lang, lang, top=top, max_length=64)
    for layer, res in chosen.layers.items():
        console.print(f"layer {layer}: features {res.features} nu={[round(s, 3) for s in res.scores]} "
                      f"alpha={[round(a, 3) for a in chosen.alphas[layer]]}")
    result = chosen.to_dict()
    if out:
        from ..io import write_json
        from ..provenance import record

        write_json(out, result, provenance=record())
        console.print(f"wrote {out}")
    if json:
        emit_json(result)


@features_app.command("repetition")
def repetition_cmd(
    texts: str = typer.Option("brown", help="Texts to build repetitive passages from (file, folder or corpus)."),
    model: ModelOpt = "default",
    sae: SaeOpt = "default",
    layer: int = typer.Option(15, help="SAE layer."),
    top: int = typer.Option(10, min=1, help="Features listed."),
    n: int = typer.Option(120, min=1, help="Repetitive passages."),
    check: bool = typer.Option(False, help="Also run the causal check (amplify / suppress the top 3)."),
    strength: float = typer.Option(0.0, help="Causal-check strength (0 = 2x the top features' mean activation on repeats)."),
    prompts: Optional[str] = typer.Option(None, help="Causal-check prompts (file); default: a few writing prompts."),
    out: Optional[Path] = typer.Option(None, help="Write the result JSON here."),
    json: JsonOpt = False,
) -> None:
    """Repetition features: activation at a token's repeats minus at its first occurrence.

    Example: qscope posttrain features repetition --layer 15 --check --out rep.json
    """
    from ..posttrain import causal_check, repetition_features, repetitive_corpus

    base = read_texts(texts, 400)
    loaded = load_models(model, sae, layer)
    lm, sae_ = loaded.lm, loaded.sae
    passages = repetitive_corpus(base, n=n)
    from rich.progress import Progress

    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("encoding", total=(len(passages) + 7) // 8)
        res = repetition_features(lm, sae_, passages, layer, top=top, progress=lambda: bar.advance(task))
    result = {"ranking": res.to_dict()}
    for f in res.features:
        console.print(f"feature {f.feature}: +{f.score:.3f} (first {f.mean_first:.3f} -> repeat {f.mean_repeat:.3f})")
    if check:
        ps = read_texts(prompts, 50) if prompts else [f"Write a short poem about {t}." for t in ("the sea", "rain", "a cat", "winter")]
        s = strength or 2.0 * max(f.mean_repeat for f in res.features[:3])
        with console.status("causal check"):
            cc = causal_check(lm, sae_, res.ids[:3], ps, strengths=(-s, 0.0, s), do_sample=False)
        result["causal_check"] = cc.to_dict()
        console.print(f"repetition ratio at strengths {cc.strengths}: {[round(r, 3) for r in cc.repetition]}")
    if out:
        from ..io import write_json
        from ..provenance import record

        write_json(out, result, provenance=record())
    if json:
        emit_json(result)


def _sft_examples(data: Path) -> list:
    """SFT examples from a jsonl of {"prompt", "response", optional "penalise"}."""
    from ..errors import QScopeError
    from ..posttrain import SFTExample

    if not data.is_file():
        raise QScopeError(f"{data}: no such file")
    examples = []
    with open(data, encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                d = _json.loads(line)
            except ValueError:
                raise QScopeError(f"{data}:{i}: not valid JSON") from None
            if not isinstance(d, dict) or "prompt" not in d or "response" not in d:
                raise QScopeError(f"{data}:{i}: expected fields 'prompt' and 'response'")
            if d.get("penalise") not in (None, True, False):
                raise QScopeError(f"{data}:{i}: 'penalise' must be true or false")
            examples.append(SFTExample(d["prompt"], d["response"], d.get("penalise")))
    if not examples:
        raise QScopeError(f"{data}: no pairs")
    return examples


def _train_and_save(lm, out: Path, name: str, steps: int, train: Callable[[Callable[[dict], None]], T],
                    status: Callable[[dict], str]) -> T:
    """`train(on_step)` under a transient progress bar that ticks once a step and shows the
    step's `status`; then the trained model is saved to `out/model`."""
    from rich.progress import Progress

    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(name, total=steps)
        res = train(lambda s: bar.update(task, advance=1, description=f"{name} {status(s)}"))
    out.mkdir(parents=True, exist_ok=True)
    lm.model.save_pretrained(out / "model")
    return res


@app.command("sasft")
def sasft_cmd(
    data: Path = typer.Argument(..., help="jsonl of {\"prompt\", \"response\"} (+ optional \"penalise\": true/false; "
                                          "default: penalised iff the response has no text in the unwanted language)."),
    features: Path = typer.Option(..., help="JSON from `posttrain features language --out`."),
    model: ModelOpt = "default",
    sae: SaeOpt = "default",
    lam: float = typer.Option(1e-3, help="Penalty weight lambda (paper: 5e-4 .. 1e-3)."),
    steps: int = typer.Option(100, min=1, help="Optimiser steps."),
    batch: int = typer.Option(4, min=1, help="Pairs per step."),
    lr: float = typer.Option(1e-3, help="Learning rate."),
    lora: int = typer.Option(16, min=0, help="LoRA rank (0 = full fine-tuning)."),
    max_length: int = typer.Option(128, min=1, help="Tokens per example."),
    seed: int = typer.Option(0, help="Seed of the LoRA initialisation and the batch order."),
    out: Path = typer.Option(Path("sasft-out"), help="Output folder: adapter/model + train_log.json."),
    json: JsonOpt = False,
) -> None:
    """Fine-tune with L = CE + lambda * mean sum_s ReLU(pre_s(h) - alpha_s), the mean over the
    tokens of responses that must be free of the unwanted language (never over responses in it).

    Example: qscope posttrain sasft pairs.jsonl --features zh.json --lam 1e-3 --steps 200 --out sasft-run
    """
    from ..errors import QScopeError
    from ..io import write_json
    from ..posttrain import LanguageFeatureSet, SASFTConfig, run_sasft
    from ..provenance import record

    examples = _sft_examples(data)
    if not features.is_file():
        raise QScopeError(f"{features}: no such file")
    try:
        spec = LanguageFeatureSet.from_dict(_json.loads(features.read_text()))
    except ValueError:
        raise QScopeError(f"{features}: not valid JSON") from None
    cfg = SASFTConfig(lam=lam, features=spec.features, alphas=spec.alphas, lang=spec.lang, lr=lr, steps=steps,
                      batch=batch, seed=seed, max_length=max_length, lora_rank=lora)
    lm, saes = load_models(model, sae, cfg.layers, dtype="float32")  # trained: bf16 weights round small AdamW steps away
    res = _train_and_save(lm, out, "SASFT", steps, lambda on_step: run_sasft(lm, saes, examples, cfg, on_step=on_step),
                          lambda s: f"ce={s['ce']:.3f} pen={s['penalty']:.4f}")
    write_json(out / "train_log.json", res.to_dict(), provenance=record(seeds={"init_and_batches": seed}))
    console.print(f"{res.n_penalised} of {res.n_examples} responses penalised; saved to {out}")
    if json:
        emit_json({k: v for k, v in res.to_dict().items() if k != "history"} | {"out": str(out)})


@app.command("grpo")
def grpo_cmd(
    prompts: str = typer.Argument(..., help="Prompts: a .txt (one per line), .jsonl or corpus name."),
    model: ModelOpt = "default",
    sae: SaeOpt = "default",
    layer: int = typer.Option(15, help="SAE layer of the repetition features."),
    features: Optional[str] = typer.Option(None, help="Comma-separated repetition features; none = vanilla GRPO."),
    strength: float = typer.Option(8.0, help="Steering strength of the one steered rollout per group."),
    steps: int = typer.Option(30, min=1, help="GRPO steps."),
    group: int = typer.Option(4, min=1, help="Rollouts per prompt (G)."),
    per_step: int = typer.Option(2, min=1, help="Prompts per step."),
    tokens: int = typer.Option(32, min=1, help="Max new tokens per rollout."),
    lr: float = typer.Option(5e-4, help="Learning rate (LoRA r=8 on q/v)."),
    kl: float = typer.Option(0.04, help="KL coefficient to the base model."),
    out: Path = typer.Option(Path("grpo-out"), help="Output folder: adapter + history.json."),
    json: JsonOpt = False,
) -> None:
    """GRPO with reward = -repetition ratio (- 0.5 for near-empty answers); with --features, one
    rollout per group is generated steering those features up (SAE-guided variant).

    Example: qscope posttrain grpo prompts.txt --features 123,456 --strength 8 --steps 30 --out grpo-guided
    """
    from ..io import write_json
    from ..model import load_model
    from ..posttrain import GRPOConfig, add_lora, train_grpo
    from ..steer import Steering

    ps = read_texts(prompts, 10_000)
    steer = None
    if features:  # trained: fp32, as in sasft
        loaded = load_models(model, sae, layer, dtype="float32")
        lm = loaded.lm
        steer = Steering.add(loaded.sae, {f: strength for f in int_list(features, "--features")})
    else:
        with console.status("loading model"):
            lm = load_model(model, dtype="float32")
    add_lora(lm, r=8, alpha=16)
    cfg = GRPOConfig(group_size=group, prompts_per_step=per_step, max_new_tokens=tokens, lr=lr, kl_coef=kl, steer=steer)
    res = _train_and_save(lm, out, "GRPO", steps, lambda on_step: train_grpo(lm, ps, cfg, steps, on_step=on_step),
                          lambda s: f"reward={s['reward']:.3f} rep={s['repetition']:.3f}")
    result = {**res.to_dict(), "out": str(out)}
    write_json(out / "history.json", result)
    console.print(f"final rollout repetition {res.final['repetition']:.3f}; saved to {out}")
    if json:
        emit_json({k: v for k, v in result.items() if k != "history"})
