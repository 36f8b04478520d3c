"""qscope models, steered or plain, as an lm-evaluation-harness backend.

    lm_eval --model qscope --model_args model=default,steer=6644:20@15 --tasks ...

`model_args` (comma-separated key=value, as the harness passes them):
- `model`: what `qscope.load_model` takes (`default`, an HF folder or hub id, a .gguf file);
- `sae`: the SAE the steering features belong to (`default` = the shipped SAE of each layer;
  a path or hub id otherwise; a `:k=<k>` suffix as on the CLI);
- `steer`: `FEATURE:STRENGTH@LAYER`, several joined by `+` (e.g. `6644:20@15+120:-8@15`);
  `@LAYER` may be left out when the SAE file names its layer; without `steer` the model runs plain;
- `mode` (`add` or `clamp`), `relative` (strengths in units of the residual norm), `positions`
  (`all`, `prompt` or `generated`): as in `qscope steer run`;
- `device`, `dtype`, and the harness' own `batch_size`, `max_length`, `max_batch_size`.

The harness' Hugging Face backend does the request batching, tokenisation, log-likelihoods and
generation; this class only loads the model through qscope and opens qscope's steering hooks
around every forward (`_model_call`, log-likelihoods) and every `generate` call (`_model_generate`,
generate_until), with fresh position state each time, so `positions=generated` steers exactly
the generated tokens. No activations are captured.

Registration: importing this module registers `qscope` with the harness (`register()` does it
explicitly); `python -m qscope.integrations.lm_eval run ...` is the harness' own CLI with it
registered. The package also declares it as an `lm_eval.models` entry point, for harness versions
that discover plugins by themselves.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ..errors import QScopeError

if TYPE_CHECKING:
    from ..model import LM

MODEL_NAME = "qscope"
_EDIT = re.compile(r"^(\d+):([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?:@(\d+))?$")


def parse_steer(spec: str) -> list[tuple[int, float, int | None]]:
    """'6644:20@15+120:-8@15' -> [(6644, 20.0, 15), (120, -8.0, 15)]."""
    edits = []
    for part in (p.strip() for p in str(spec).split("+")):
        match = _EDIT.match(part)
        if not match:
            raise QScopeError(f"steer={spec!r}: expected FEATURE:STRENGTH@LAYER joined by '+', e.g. 6644:20@15")
        feature, strength, layer = match.groups()
        edits.append((int(feature), float(strength), int(layer) if layer is not None else None))
    return edits


def build_steering(lm: LM, sae: str, spec: str, mode: str = "add", relative: bool = False,
                   positions: str = "all") -> list:
    """One `Steering` per layer named in `spec`, each with the SAE of its layer."""
    from ..sae import SAE
    from ..steer import FeatureEdit, Steering

    by_layer: dict[int | None, list] = {}
    for feature, strength, layer in parse_steer(spec):
        by_layer.setdefault(layer, []).append(FeatureEdit(feature, strength, mode, relative))
    out = []
    for layer, edits in by_layer.items():
        sae_ = SAE.load(sae, layer=layer)
        where = lm.check_sae(sae_, layer)
        out.append(Steering(sae_.to(lm.layer_device(where)), edits, positions, where))
    return out


def _flag(value) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes")


try:
    from lm_eval.api.registry import register_model
    from lm_eval.models.huggingface import HFLM
except ImportError as exc:  # the optional extra is missing: say how to get it
    raise QScopeError(f"the lm-eval adapter needs lm-evaluation-harness (pip install 'qscope[lm-eval]'): {exc}") from None


@register_model(MODEL_NAME)
class QScopeLM(HFLM):
    """HFLM over a model loaded by qscope, with qscope steering on every forward."""

    def __init__(self, model: str = "default", sae: str = "default", steer: str | None = None, mode: str = "add",
                 relative=False, positions: str = "all", device: str | None = None, dtype: str | None = None,
                 pretrained=None, **kwargs):
        from ..model import load_model

        if pretrained is not None:
            raise QScopeError("the qscope backend takes model=..., not pretrained=...")
        lm = load_model(model, device=device, dtype=dtype)
        self.qscope_lm = lm
        self.steering = build_steering(lm, sae, str(steer), mode, _flag(relative), positions) if steer else None
        super().__init__(pretrained=lm.model, tokenizer=lm.tokenizer, **kwargs)

    @contextmanager
    def steered(self):
        """qscope's edit hooks for one forward or one generate call (fresh position state)."""
        from ..model import hooks

        if self.steering is None:
            yield
            return
        with hooks.edit(self.qscope_lm.layers, self.qscope_lm._edits(self.steering)):
            yield

    def _model_call(self, *args, **kwargs):
        with self.steered():
            return super()._model_call(*args, **kwargs)

    def _model_generate(self, *args, **kwargs):
        with self.steered():
            return super()._model_generate(*args, **kwargs)


def register() -> type:
    """Make `--model qscope` known to the harness in this process (importing this module does it)."""
    return QScopeLM


def main() -> None:
    """`python -m qscope.integrations.lm_eval run --model qscope ...`: the harness' CLI, with qscope registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
