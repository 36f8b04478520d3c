"""The SAE's configuration: shape, activation, and where in which model it reads."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from numbers import Integral
from typing import Any

ACTIVATIONS = ("topk", "jumprelu", "relu")


@dataclass
class SAEConfig:
    """Everything needed to rebuild an SAE and to check it against a model.

    `apply_b_dec_to_input` is False for Qwen-Scope (encode reads the raw residual) and True
    for sparsify-style SAEs (encode reads `x - b_dec`); getting this wrong costs a lot of
    fidelity (FVU 0.20 vs 0.47 on Qwen-Scope), so it is explicit and saved.
    """

    d_model: int
    d_sae: int
    activation: str = "topk"
    k: int | None = None
    layer: int | None = None
    hook: str | None = None
    model_name: str | None = None
    apply_b_dec_to_input: bool = False
    dtype: str = "float32"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from ..errors import QScopeError

        for name in ("d_model", "d_sae", "k", "layer"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, Integral)):
                raise QScopeError(f"SAE {name} must be a whole number, got {value!r}")
        if self.activation not in ACTIVATIONS:
            raise QScopeError(f"SAE activation {self.activation!r} is not one of {ACTIVATIONS}")
        if self.d_model <= 0 or self.d_sae <= 0:
            raise QScopeError(f"SAE shape must be positive, got d_model={self.d_model}, d_sae={self.d_sae}")
        if self.activation == "topk" and not (self.k and 0 < self.k <= self.d_sae):
            raise QScopeError(f"a TopK SAE needs 0 < k <= d_sae ({self.d_sae}), got k={self.k}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_saelens(self) -> dict[str, Any]:
        """A `cfg.json` that SAELens (v6 and older) can read, plus a `qscope` block of our own."""
        hook = self.hook or (f"blocks.{self.layer}.hook_resid_post" if self.layer is not None else None)
        architecture = {"topk": "topk", "jumprelu": "jumprelu", "relu": "standard"}[self.activation]
        cfg: dict[str, Any] = {
            "architecture": architecture,
            "d_in": self.d_model,
            "d_sae": self.d_sae,
            "dtype": self.dtype,
            "device": "cpu",
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": "none",
            "reshape_activations": "none",
            "metadata": {"model_name": self.model_name, "hook_name": hook, "hook_head_index": None,
                         "prepend_bos": False},
            # Keys of SAELens < 6, kept so older readers load the folder too.
            "model_name": self.model_name,
            "hook_name": hook,
            "hook_layer": self.layer,
            "activation_fn_str": "topk" if self.activation == "topk" else "relu",
            "activation_fn_kwargs": {"k": self.k} if self.k else {},
            "qscope": {"activation": self.activation, "layer": self.layer, "hook": self.hook,
                       "metadata": self.metadata},
        }
        if self.k:
            cfg["k"] = self.k
        return cfg
