"""Known SAE releases: the 14 Qwen-Scope repos and qscope's shipped SAEs for the default model.

A release tells `SAE.load` what it is loading (model, widths, k, layer count) so a wrong
layer or a model mismatch is caught before any download.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path


@dataclass(frozen=True)
class Release:
    repo: str
    model: str
    n_layers: int
    d_model: int
    d_sae: int
    k: int
    activation: str = "topk"

    @property
    def layers(self) -> range:
        return range(self.n_layers)

    def to_dict(self) -> dict:
        return asdict(self)


def _qwen_scope(model: str, base: bool, n_layers: int, d_model: int, widths: dict[int, int]) -> list[Release]:
    name = model + ("-Base" if base else "")
    out = []
    for k, d_sae in widths.items():
        out.append(Release(f"Qwen/SAE-Res-{name}-W{d_sae // 1024}K-L0_{k}", f"Qwen/{name}", n_layers, d_model, d_sae, k))
    return out


QWEN_SCOPE: tuple[Release, ...] = tuple(
    _qwen_scope("Qwen3-1.7B", True, 28, 2048, {50: 32768, 100: 32768})
    + _qwen_scope("Qwen3-8B", True, 36, 4096, {50: 65536, 100: 65536})
    + _qwen_scope("Qwen3.5-2B", True, 24, 2048, {50: 32768, 100: 32768})
    + _qwen_scope("Qwen3.5-9B", True, 32, 4096, {50: 65536, 100: 65536})
    + _qwen_scope("Qwen3.5-27B", False, 64, 5120, {50: 81920, 100: 81920})
    + _qwen_scope("Qwen3-30B-A3B", True, 48, 2048, {50: 32768, 100: 131072})
    + _qwen_scope("Qwen3.5-35B-A3B", True, 40, 2048, {50: 32768, 100: 131072})
)

# qscope's own SAEs for the default model, committed in the package (see docs/default-saes.md).
DEFAULT_RELEASE = Release("default", "HuggingFaceTB/SmolLM2-135M-Instruct", 30, 576, 9216, 50)


def find_release(repo: str) -> Release | None:
    """The release whose repo id is `repo` (case-insensitive), if known."""
    key = repo.strip().rstrip("/").lower()
    if key == "default":
        return DEFAULT_RELEASE
    return next((r for r in QWEN_SCOPE if r.repo.lower() == key), None)


def default_sae_root() -> Path:
    """Folder of the shipped default SAEs: one `layer{n}/` qscope folder per layer."""
    return Path(str(resources.files("qscope") / "assets" / "saes" / "smollm2-135m-instruct"))


def default_layers() -> list[int]:
    """Layers for which a default SAE is shipped."""
    root = default_sae_root()
    if not root.is_dir():
        return []
    return sorted(int(p.name[5:]) for p in root.glob("layer*") if p.name[5:].isdigit())
