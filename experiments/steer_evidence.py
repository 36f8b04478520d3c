"""Steering evidence: SAE features against the controls that could explain them away.

    python experiments/steer_evidence.py                 # cases a, b, c (resumes from cached generations)
    python experiments/steer_evidence.py --case c --tokens 16 --control-seeds 0,1,2

Default model (SmolLM2-135M-Instruct) + shipped layer-15 SAE; greedy, chat template. Three cases:
(a) French question + "Answer in English.": suppress the French features; success = English.
(b) English question (NQ-open / TriviaQA): amplify the French features; success = French.
(c) French question, no instruction (the model's natural slip to English): suppress the
    English features; success = French.
Methods at matched edit norms (`qscope.steer.methods`): sae, sae-gated, diffmean, repe,
random-feature and random-direction (one draw per control seed), plus sae-output in (b) (the top
output features by logit lens, `features.search.output_features`), plus >= 2 prompting
instructions per case, one of which does not name the unwanted language.

Splits: features and directions come from corpus texts (48 UDHR/gettext French vs 48 Brown
English texts), never from prompts. The prompts of the earlier case studies
(`steer_case_studies.FRENCH_QUESTIONS`, `ENGLISH_QUESTIONS`) are the selection split: the number
of features (3) and the strength range were chosen on them. Every number reported here is on the
test split (experiments/data/french_questions_test.txt, 121 questions; 120 NQ-open + TriviaQA
questions), which was not looked at before these runs.
Judge: lingua (n-gram language ID); the stopword detector is reported beside it with the
agreement. Results: docs/steering/evidence/<case>.json|png; generations are cached in
docs/steering/evidence/generations_<case>.json (resume after a kill).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "experiments"))

from steer_case_studies import JsonCache, corpus_texts, find_features  # noqa: E402

from qscope.features.search import collect_stats, output_features  # noqa: E402
from qscope.io import write_json  # noqa: E402
from qscope.data.language import language_detector, language_judge  # noqa: E402
from qscope.model import load_model  # noqa: E402
from qscope.provenance import record  # noqa: E402
from qscope.sae import SAE  # noqa: E402
from qscope.steer.compare import MethodComparison, compare_methods  # noqa: E402
from qscope.steer.directions import mean_residual_norm  # noqa: E402
from qscope.steer.evaluate import NEUTRAL_PROMPTS_LONG  # noqa: E402
from qscope.steer.methods import METHODS, build_methods  # noqa: E402

OUT = ROOT / "docs" / "steering" / "evidence"
TEST_FRENCH = ROOT / "experiments" / "data" / "french_questions_test.txt"

CASES = {
    "a": dict(title="(a) French question + 'Answer in English.': suppress French features",
              features="french", strengths=[-5, -10, -15, -30], target="en", prompts="french+instruction",
              baselines=["Important: reply only in English, not in French.", "Your whole reply must be in English."]),
    "b": dict(title="(b) English question: amplify French features", features="french",
              strengths=[5, 10, 15, 30], target="fr", prompts="english",
              baselines=["Answer in French.", "Réponds uniquement en français.", "Answer in French, not in English."]),
    "c": dict(title="(c) French question, no instruction: suppress English features", features="english",
              strengths=[-5, -10, -20, -30], target="fr", prompts="french",
              baselines=["Réponds en français.", "Answer in French, not in English."]),
}


def test_prompts(kind: str, n: int) -> list[str]:
    """The held-out test prompts of a case."""
    if kind == "english":
        from qscope.data.benchmarks import load_benchmark

        items = load_benchmark("nq_open", limit=n // 2, seed=0) + load_benchmark("triviaqa", limit=n - n // 2, seed=0)
        return [it.prompt.removeprefix("Question: ").split("\nAnswer:")[0] for it in items]
    french = [q for q in TEST_FRENCH.read_text(encoding="utf-8").splitlines() if q.strip()][:n]
    return [f"{q} Answer in English." for q in french] if kind == "french+instruction" else french


def _cell(value, ci=None, digits=2) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")


def primary_test(data: dict, budget: float = 0.1) -> list[str]:
    """The registered comparison: best sae vs best diffmean within KL <= budget, paired exact
    McNemar on the same prompts (plus sae vs each random control, for the record)."""
    from qscope.data.language import language_judge
    from qscope.stats import mcnemar_exact

    judge = language_judge(data["setup"]["detector"].rsplit("_", 1)[-1])
    row = next(r for r in data["best_at_kl"] if r["kl_budget"] == budget)

    def verdicts(method):
        best = row["by_method"].get(method)
        if best is None:
            return None, None
        key = f"{best['strength']:g}" if best["strength"] else None
        outs = data["outputs"]["plain"]["0"] if key in (None, "0") else data["outputs"][method][key]
        return [judge(o) for o in outs], best

    sae, sae_best = verdicts("sae")
    lines = [f"Registered test at KL <= {budget} (paired exact McNemar over the same prompts; p uncorrected):", ""]
    for other in [m for m in data["methods"] if m != "sae"]:
        theirs, best = verdicts(other)
        if sae is None or theirs is None:
            continue
        t = mcnemar_exact(sae, theirs)
        lines.append(f"- sae ({sae_best['success']:.3f} at {sae_best['strength']:g}) vs {other} ({best['success']:.3f} at "
                     f"{best['strength']:g}): only sae {t['only_first']}, only {other} {t['only_second']}, p = {t['p']:.3g}")
    return lines + [""]


def report(out: Path, cases: list[str]) -> str:
    """Markdown tables of finished cases (what docs/steering.md shows)."""
    lines = ["# Steering methods against their controls: full results", "",
             "Written by `python experiments/steer_evidence.py --report > docs/steering/evidence/report.md` from "
             "the case JSON files (their `provenance` holds the command, commit and seeds of each run). "
             "Setup and registered comparison: [../../steering.md](../../steering.md).", ""]
    for name in cases:
        path = out / f"{name}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        MethodComparison(data["methods"], data["prompting"], data["setup"]).plot(out / f"{name}.png")
        lines += [f"#### {data['setup']['title']}", "",
                  f"{data['setup']['n_prompts']} test prompts, features {data['setup']['features']}; success judged by "
                  f"{data['setup']['detector']} (stopword detector beside it). Each cell: value [95% interval].", "",
                  "| method | strength | edit / mean norm(h) | success | stopwords | KL neutral | perplexity | tokens |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for method, rows in data["methods"].items():
            for row in rows[1:]:
                lines.append(f"| {method} | {row['strength']:g} | {row['edit_norm_ratio']:.2f} | "
                             f"{_cell(row['success'], row['success_ci'])} | {_cell(row['success_alt'])} | "
                             f"{_cell(row['kl'], row['kl_ci'], 3)} | {_cell(row['perplexity'], row['perplexity_ci'], 1)} | "
                             f"{row['mean_tokens']:.1f} |")
        plain = next(iter(data["methods"].values()))[0]
        lines.append(f"| plain | 0 | 0 | {_cell(plain['success'], plain['success_ci'])} | {_cell(plain['success_alt'])} "
                     f"| 0 | {_cell(plain['perplexity'], plain['perplexity_ci'], 1)} | {plain['mean_tokens']:.1f} |")
        for row in data["prompting"]:
            lines.append(f"| prompt: \"{row['instruction']}\" | - | - | {_cell(row['success'], row['success_ci'])} | "
                         f"{_cell(row['success_alt'])} | {_cell(row['kl'], row['kl_ci'], 3)} | "
                         f"{_cell(row['perplexity'], row['perplexity_ci'], 1)} | {row['mean_tokens']:.1f} |")
        lines += ["", "Best success within a KL budget on the neutral prompts:", "",
                  "| KL budget | best | " + " | ".join(data["methods"]) + " |",
                  "| --- | --- | " + " | ".join("---" for _ in data["methods"]) + " |"]
        for row in data["best_at_kl"]:
            cells = [_cell(row["by_method"][m]["success"], row["by_method"][m]["success_ci"]) if m in row["by_method"]
                     else "-" for m in data["methods"]]
            lines.append(f"| {row['kl_budget']} | {row['best']} | " + " | ".join(cells) + " |")
        lines += primary_test(data)
        agree = [r["judge_agreement"] for rows in data["methods"].values() for r in rows if r["judge_agreement"] is not None]
        lines += ["", f"Judges agree on {min(agree):.0%}-{max(agree):.0%} of answers per condition.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=sorted(CASES), action="append", help="Run only these cases.")
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--n-test", type=int, default=120)
    ap.add_argument("--n-features", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0, help="First draw of the random controls; repe's pairing.")
    ap.add_argument("--control-seeds", default="0,1,2", help="Draws of random-feature and random-direction.")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--report", action="store_true",
                    help="Print the markdown tables of finished cases, redraw their plots, and stop.")
    ap.add_argument("--out", type=Path, default=OUT, help="Folder for results and the generation caches.")
    args = ap.parse_args()
    out = args.out
    if args.report:
        cases = args.case or sorted(CASES)
        print(report(out, cases))
        write_summary(out, cases)
        return
    control_seeds = [int(s) for s in args.control_seeds.split(",") if s.strip()]

    lm = load_model("default", dtype="float32")  # the published numbers are fp32 (see docs/benchmarks.md)
    sae = SAE.load("default", layer=args.layer, device=lm.device)
    fr, en = corpus_texts("multilingual", "fr"), corpus_texts("brown")
    norm = mean_residual_norm(lm, args.layer, NEUTRAL_PROMPTS_LONG)
    rates = collect_stats(lm, sae, fr + en, args.layer, max_length=128).rate
    judges = {lang: (language_judge(lang), language_detector(lang)) for lang in ("en", "fr")}
    for name in args.case or sorted(CASES):
        case = CASES[name]
        positive, negative = (fr, en) if case["features"] == "french" else (en, fr)
        feats = find_features(lm, sae, args.layer, args.n_features, language=case["features"])["chosen"]
        methods = build_methods(lm, sae, feats, METHODS, norm, positive, negative, rates, args.layer,
                                seed=args.seed, control_seeds=control_seeds)
        if name == "b":
            out_feats = [o.feature for o in output_features(lm, sae, positive, negative, top=args.n_features)]
            methods.add_features("sae-output", out_feats)
        prompts = test_prompts(case["prompts"], args.n_test)
        judge, second = judges[case["target"]]
        cache = JsonCache(out / f"generations_{name}.json")
        print(f"[{name}] {len(prompts)} test prompts, features {feats}, methods {list(methods.factories)}",
              file=sys.stderr, flush=True)
        done = [0]

        def progress(k: int) -> None:
            done[0] += k
            print(f"  [{name}] {done[0]} generated", file=sys.stderr, flush=True)

        result = compare_methods(lm, methods, case["strengths"], prompts, judge, case["baselines"],
                                 neutral_prompts=NEUTRAL_PROMPTS_LONG, max_new_tokens=args.tokens,
                                 batch_size=args.batch_size, cache=cache, second_detector=second,
                                 progress=progress, title=case["title"])
        data = result.to_dict(with_outputs=True)
        data["setup"].update(case=name, prompts=prompts, split="test", positive_n=len(positive),
                             negative_n=len(negative))
        write_json(out / f"{name}.json", data, provenance=record(seeds={"repe_pairing": args.seed,
                                                                         "controls": control_seeds}))
        result.plot(out / f"{name}.png")
        for row in data["best_at_kl"]:
            print(f"  KL <= {row['kl_budget']}: best {row['best']}", file=sys.stderr, flush=True)


def write_summary(out: Path, cases: list[str]) -> None:
    """summary.json: each case's best success within each KL budget, read from <case>.json (with
    the provenance of the run that made it), so the summary never mixes runs silently."""
    summary = {}
    for name in cases:
        path = out / f"{name}.json"
        if path.exists():
            data = json.loads(path.read_text(encoding="utf-8"))
            summary[name] = {"best_at_kl": data["best_at_kl"], "made_by": data.get("provenance")}
    write_json(out / "summary.json", summary, provenance=record())


if __name__ == "__main__":
    main()
