"""Steering case studies on the default model (SmolLM2-135M-Instruct + shipped layer-15 SAE).

    python experiments/steer_case_studies.py [--layer 15] [--tokens 16] [--only a|b|gated|natural|c] [--n-features 3]

(a) Language slip: French questions with "Answer in English." - how often does the answer slip
    into French? French features are found contrastively (UDHR/gettext French vs Brown English)
    and suppressed (negative add on every position, then gated by the feature itself); success =
    share of answers detected as English, with fluency and KL on neutral prompts.
(b) Amplifying the same French features on English questions: share of answers in French over a
    strength sweep, against the prompting baseline "Answer in French."
(c) The slip the model makes on its own: French questions (no instruction) answered in English.
    English-vs-French features are suppressed; success = share of answers in French.
(natural) How often the plain model leaves the prompt's language: 200 English questions and the
    French questions, greedy.
Generations are cached in docs/steering/generations.json, so an interrupted run resumes where it
stopped; results go to docs/steering/*.json|png.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from qscope.data import load_texts, pull_corpus, texts_by_language
from qscope.features.search import contrast
from qscope.io import write_json
from qscope.data.language import detect_language, language_detector
from qscope.model import load_model
from qscope.provenance import record
from qscope.sae import SAE
from qscope.steer import FeatureEdit, Steering
from qscope.steer.evaluate import evaluate_steering

OUT = ROOT / "docs" / "steering"

FRENCH_QUESTIONS = """Quelle est la capitale de l'Italie ?
Pourquoi le ciel est-il bleu ?
Comment faire un bon café ?
Quels sont les avantages du sport ?
Peux-tu me décrire un chat ?
Qu'est-ce qu'un ordinateur ?
Pourquoi les gens aiment-ils voyager ?
Comment apprendre une nouvelle langue ?
Quel temps fait-il en hiver au Canada ?
Comment fonctionne un vélo ?
Pourquoi faut-il boire de l'eau ?
Qu'est-ce que la photosynthèse ?
Quels fruits sont bons pour la santé ?
Comment bien dormir la nuit ?
Pourquoi les chiens sont-ils fidèles ?
Que faire un dimanche pluvieux ?
Comment préparer une omelette ?
Qui a écrit Les Misérables ?
Combien de jours y a-t-il dans une année ?
Pourquoi la mer est-elle salée ?
Comment économiser de l'argent ?
Quel est le plus grand océan du monde ?
Comment planter des tomates ?
Pourquoi les feuilles tombent-elles en automne ?
Qu'est-ce qu'un volcan ?
Comment écrire une bonne lettre ?
Quels sont les sports les plus populaires ?
Pourquoi la lune change-t-elle de forme ?
Comment rester concentré au travail ?
Qu'est-ce que la musique classique ?
Comment nettoyer une cuisine rapidement ?
Pourquoi les oiseaux migrent-ils ?
Quelle est la différence entre un lac et une mer ?
Comment se faire des amis dans une nouvelle ville ?
Qu'est-ce qu'une étoile ?
Pourquoi faut-il se brosser les dents ?
Comment choisir un bon livre ?
Quels animaux vivent dans la forêt ?
Comment fonctionne un téléphone ?
Pourquoi le pain est-il important en France ?
Comment apprendre à nager ?
Qu'est-ce que la pluie ?
Comment organiser une fête d'anniversaire ?
Pourquoi les enfants doivent-ils aller à l'école ?
Quelle est la meilleure saison pour visiter Paris ?
Comment réduire le stress ?
Qu'est-ce qu'un arc-en-ciel ?
Comment cuisiner des pâtes ?
Pourquoi les abeilles sont-elles utiles ?
Comment devenir un bon cuisinier ?""".splitlines()

ENGLISH_QUESTIONS = """What is your favourite season and why?
How do I make a cup of tea?
Describe a walk in the park.
What are the benefits of reading?
Tell me about the moon.
How can I learn to paint?
Why do cats purr?
What is a good breakfast?
How does rain form?
Give me advice for a job interview.
What do people do at the beach?
Describe your ideal weekend.
How do plants grow?
What is the best way to study?
Tell me about trains.
Why is exercise important?
How do I cook rice?
What makes a good friend?
Describe a busy city street.
How do birds fly?
What is music?
How can I save energy at home?
Tell me about the ocean.
What should I pack for a trip?""".splitlines()


class JsonCache(dict):
    """A dict of finished cells that rewrites its JSON file on every new entry (resume after a kill).

    Each write re-reads the file under a lock and merges, so two processes that run different cells
    into the same folder keep each other's entries."""

    def __init__(self, path: Path):
        self.path = path
        super().__init__(self._read())

    def _read(self) -> dict:
        found = json.loads(self.path.read_text()) if self.path.exists() else {}
        found.pop("provenance", None)
        return found

    def refresh(self) -> None:
        """Take in the cells another process has written since."""
        self.update(self._read())

    def __setitem__(self, key, value):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.refresh()
            super().__setitem__(key, value)
            write_json(self.path, dict(self), provenance=record())


def corpus_texts(name: str, lang: str | None = None, n: int = 48, max_chars: int = 600) -> list[str]:
    """The first `n` texts of a built-in corpus (optionally one language), cut to `max_chars`."""
    pull_corpus(name)
    texts = load_texts(name, limit=n * 3) if lang is None else texts_by_language(name)[lang]
    return [t[:max_chars] for t in texts if len(t) > 80][:n]


def find_features(lm, sae, layer: int, n: int, language: str = "french") -> dict:
    """Top features of French vs English text (or English vs French with language="english")."""
    path = OUT / f"{language}_features_layer{layer}.json"
    if path.exists():
        return json.loads(path.read_text())
    fr, en = corpus_texts("multilingual", "fr"), corpus_texts("brown")
    pos, neg = (fr, en) if language == "french" else (en, fr)
    found = contrast(lm, sae, pos, neg, layer=layer, top=10, max_length=128)
    result = {"layer": layer, "n_fr": len(fr), "n_en": len(en), "top": found.to_dict()["features"],
              "chosen": found.ids[:n]}
    write_json(path, result, provenance=record())
    return result


def run_case(name, lm, factory, prompts, strengths, detector, baseline, cache, tokens, sae) -> dict:
    print(f"[{name}] {len(prompts)} prompts, strengths {strengths}", file=sys.stderr, flush=True)
    result = evaluate_steering(lm, factory, prompts, strengths, detector=detector, baseline_prompt=baseline,
                               sae=sae, max_new_tokens=tokens, batch_size=50, cache=cache,
                               progress=lambda k: print(f"  +{k} generated", file=sys.stderr, flush=True))
    write_json(OUT / f"{name}.json", result.to_dict(), provenance=record())
    result.plot(OUT / f"{name}.png")
    for row in result.table():
        print(f"  {row['label']:<12} success={row['success']:.2f} ppl={row['perplexity']:.1f} kl={row['kl']:.4f}",
              file=sys.stderr, flush=True)
    return {"table": result.table()}


def natural_slips(lm, n: int, cache: dict, tokens: int = 24) -> dict:
    """How often the plain model leaves the prompt's language on its own (greedy, chat template):
    `n` English questions (NQ-open + TriviaQA) and the French questions without an instruction."""
    from collections import Counter

    from qscope.data.benchmarks import load_benchmark

    items = load_benchmark("nq_open", limit=n // 2, seed=0) + load_benchmark("triviaqa", limit=n - n // 2, seed=0)
    english = [it.prompt.removeprefix("Question: ").split("\nAnswer:")[0] for it in items]
    out = {}
    for name, prompts, lang in (("english_questions", english, "en"), ("french_questions", FRENCH_QUESTIONS, "fr")):
        key = f"natural|{name}|{len(prompts)}|{tokens}"
        if key not in cache:
            cache[key] = lm.generate(prompts, max_new_tokens=tokens, chat=True, do_sample=False)
        detected = [detect_language(a) for a in cache[key]]
        langs = Counter(detected)
        slipped = [(q, a) for q, a, d in zip(prompts, cache[key], detected) if d not in (lang, "und")]
        out[name] = {"n": len(prompts), "prompt_language": lang, "answer_languages": dict(langs.most_common()),
                     "share_in_prompt_language": langs[lang] / len(prompts), "slips": slipped[:20]}
        print(f"[natural] {name}: {dict(langs.most_common())}", file=sys.stderr, flush=True)
    write_json(OUT / "natural_slips.json", out, provenance=record(seeds={"question_sample": 0}))
    return {k: {kk: v[kk] for kk in ("n", "answer_languages", "share_in_prompt_language")} for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--n-features", type=int, default=3)
    ap.add_argument("--only", choices=["a", "b", "gated", "natural", "c"], action="append", help="Run only these parts.")
    ap.add_argument("--n-natural", type=int, default=200, help="English questions for the natural-slip count")
    args = ap.parse_args()
    parts = args.only or ["a", "b", "gated", "natural", "c"]

    lm = load_model("default", dtype="float32")
    sae = SAE.load("default", layer=args.layer, device=lm.device)
    cache = JsonCache(OUT / "generations.json")
    feats = find_features(lm, sae, args.layer, args.n_features)["chosen"]
    print(f"French features at layer {args.layer}: {feats}", file=sys.stderr, flush=True)

    def add(strength: float, gated: bool = False):
        return Steering(sae, [FeatureEdit(f, strength, "add", gate=f if gated else None) for f in feats])

    summary = {"layer": args.layer, "features": feats, "tokens": args.tokens}
    slip_prompts = [f"{q} Answer in English." for q in FRENCH_QUESTIONS]
    if "a" in parts:
        summary["a_slip"] = run_case("a_slip", lm, add, slip_prompts, [0, -15, -30], language_detector("en"),
                                     "Important: reply only in English, not in French.", cache, args.tokens, sae)
    if "b" in parts:
        summary["b_amplify"] = run_case("b_amplify", lm, add, ENGLISH_QUESTIONS, [0, 15, 30],
                                        language_detector("fr"), "Answer in French.", cache, args.tokens, sae)
    if "gated" in parts:
        summary["a_gated"] = run_case("a_slip_gated", lm, lambda s: add(s, gated=True), slip_prompts, [-30],
                                      language_detector("en"), None, cache, args.tokens, sae)
    if "natural" in parts:
        summary["natural"] = natural_slips(lm, args.n_natural, cache)
    if "c" in parts:  # the natural slip: French questions answered in English; suppress English features
        en_feats = find_features(lm, sae, args.layer, args.n_features, language="english")["chosen"]
        summary["c_english_features"] = en_feats
        summary["c_natural_slip"] = run_case(
            "c_natural_slip", lm, lambda s: Steering(sae, [FeatureEdit(f, s, "add") for f in en_feats]),
            FRENCH_QUESTIONS, [0, -10, -20], language_detector("fr"), "Réponds en français.", cache, args.tokens, sae)
    old = json.loads((OUT / "summary.json").read_text()) if (OUT / "summary.json").exists() else {}
    write_json(OUT / "summary.json", {**old, **summary}, provenance=record())


if __name__ == "__main__":
    main()
