"""`qscope posttrain`: choose language / repetition features, SASFT, SAE-guided GRPO."""

from __future__ import annotations

import json as _json
from pathlib import Path
from typing import Optional

import typer

from .common import JsonOpt, ModelOpt, SaeOpt, console, emit_json, load_models, read_texts

app = typer.Typer(help="SAE-guided post-training: SASFT against code-switching, SAE-guided GRPO against repetition.",
                  no_args_is_help=True)
features_app = typer.Typer(help="Choose the features that SASFT / SAE-guided GRPO use.", no_args_is_help=True)
app.add_typer(features_app, name="features")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="posttrain")


def _layers(spec: str) -> list[int]:
    from ..errors import QScopeError

    try:
        return [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise QScopeError(f"--layers must be comma-separated integers, not {spec!r}") from None


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
    (mean pre-activation on the other languages).

    Example: qscope posttrain features language zh --texts zh=chinese,en=brown --layers 24 --out zh.json
    """
    from ..posttrain import estimate_alphas, monolinguality

    by_lang = _texts_by_lang(texts, limit)
    lm, saes = load_models(model, sae, _layers(layers))
    result = {"lang": lang, "layers": {}}
    for layer, sae_ in saes.items():
        with console.status(f"layer {layer}: monolinguality"):
            res = monolinguality(lm, sae_, by_lang, lang, top=top, layer=layer, max_length=64)
            others = [t for k, v in by_lang.items() if k != lang for t in v]
            alphas = estimate_alphas(lm, sae_, res.features, others, layer=layer, max_length=64)
        result["layers"][str(layer)] = {**res.to_dict(), "alphas": alphas.tolist()}
        console.print(f"layer {layer}: features {res.features} nu={[round(s, 3) for s in res.scores]} "
                      f"alpha={[round(a, 3) for a in alphas.tolist()]}")
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


@app.command("sasft")
def sasft_cmd(
    data: Path = typer.Argument(..., help="jsonl of {\"prompt\": ..., \"response\": ...} pairs."),
    features: Path = typer.Option(..., help="JSON from `posttrain features language --out`."),
    model: ModelOpt = "default",
    sae: SaeOpt = "default",
    lam: float = typer.Option(1e-3, help="Penalty weight lambda (paper: 5e-4 .. 1e-3)."),
    steps: int = typer.Option(100, min=1, help="Optimiser steps."),
    batch: int = typer.Option(4, min=1, help="Pairs per step."),
    lr: float = typer.Option(1e-3, help="Learning rate."),
    lora: int = typer.Option(16, min=0, help="LoRA rank (0 = full fine-tuning)."),
    max_length: int = typer.Option(128, min=1, help="Tokens per example."),
    out: Path = typer.Option(Path("sasft-out"), help="Output folder: adapter/model + train_log.json."),
    json: JsonOpt = False,
) -> None:
    """Fine-tune with L = CE + lambda * mean_response_tokens sum_s ReLU(pre_s(h) - alpha_s).

    Example: qscope posttrain sasft pairs.jsonl --features zh.json --lam 1e-3 --steps 200 --out sasft-run
    """
    import random

    import torch
    from rich.progress import Progress

    from ..errors import QScopeError
    from ..io import write_json
    from ..posttrain import SASFTPenalty, add_lora, build_sft_batch, sft_step

    for path in (data, features):
        if not path.is_file():
            raise QScopeError(f"{path}: no such file")
    pairs = []
    with open(data, encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if line.strip():
                try:
                    d = _json.loads(line)
                except ValueError:
                    raise QScopeError(f"{data}:{i}: not valid JSON") from None
                if not isinstance(d, dict) or "prompt" not in d or "response" not in d:
                    raise QScopeError(f"{data}:{i}: expected fields 'prompt' and 'response'")
                pairs.append((d["prompt"], d["response"]))
    if not pairs:
        raise QScopeError(f"{data}: no pairs")
    try:
        spec = _json.loads(features.read_text())["layers"]
        for v in spec.values():
            v["features"], v["alphas"]  # noqa: B018
    except (ValueError, KeyError, TypeError, AttributeError):
        raise QScopeError(f"{features}: expected the JSON of `qscope posttrain features language --out` "
                          "({\"layers\": {layer: {\"features\": [...], \"alphas\": [...]}}})") from None
    layers = [int(k) for k in spec]
    lm, saes = load_models(model, sae, layers, dtype="float32")  # trained: bf16 weights round small AdamW steps away
    penalty = SASFTPenalty(lm, saes, {l: spec[str(l)]["features"] for l in layers},
                           {l: torch.tensor(spec[str(l)]["alphas"]) for l in layers}, lam=lam)
    if lora:
        add_lora(lm, r=lora, alpha=2 * lora, target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"))
    opt = torch.optim.AdamW([p for p in lm.model.parameters() if p.requires_grad], lr=lr)
    rng = random.Random(0)
    log = []
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("SASFT", total=steps)
        for step in range(steps):
            s = sft_step(lm.model, build_sft_batch(lm.tokenizer, rng.sample(pairs, min(batch, len(pairs))), max_length), opt,
                         penalty=penalty)
            log.append({"step": step, **s})
            bar.update(task, advance=1, description=f"SASFT ce={s['ce']:.3f} pen={s['penalty']:.4f}")
    out.mkdir(parents=True, exist_ok=True)
    lm.model.save_pretrained(out / "model")
    result = {"penalty": penalty.to_dict(), "steps": steps, "final": log[-1], "out": str(out)}
    write_json(out / "train_log.json", {**result, "log": log})
    console.print(f"saved to {out}")
    if json:
        emit_json(result)


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
    from rich.progress import Progress

    from ..io import write_json
    from ..model import load_model
    from ..posttrain import GRPOConfig, add_lora, train_grpo
    from ..steer import Steering

    ps = read_texts(prompts, 10_000)
    steer = None
    if features:  # trained: fp32, as in sasft
        loaded = load_models(model, sae, layer, dtype="float32")
        lm = loaded.lm
        steer = Steering.add(loaded.sae, {int(f): strength for f in features.split(",")})
    else:
        with console.status("loading model"):
            lm = load_model(model, dtype="float32")
    add_lora(lm, r=8, alpha=16)
    cfg = GRPOConfig(group_size=group, prompts_per_step=per_step, max_new_tokens=tokens, lr=lr, kl_coef=kl, steer=steer)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("GRPO", total=steps)
        hist = train_grpo(lm, ps, cfg, steps, callback=lambda s: bar.update(
            task, advance=1, description=f"GRPO reward={s['reward']:.3f} rep={s['repetition']:.3f}"))
    out.mkdir(parents=True, exist_ok=True)
    lm.model.save_pretrained(out / "model")
    result = {"config": cfg.to_dict(), "history": hist, "out": str(out)}
    write_json(out / "history.json", result)
    console.print(f"final rollout repetition {hist[-1]['repetition']:.3f}; saved to {out}")
    if json:
        emit_json({k: v for k, v in result.items() if k != "history"} | {"final": hist[-1]})
