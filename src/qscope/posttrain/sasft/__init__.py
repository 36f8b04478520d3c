"""SASFT: SAE-guided supervised fine-tuning (Qwen-Scope, Application 4; spec section 6).

- `penalty`: `SASFTPenalty` (lam * L_reduce on the residuals of chosen layers), the masks, the
  unlikelihood baseline term;
- `data`: `SFTExample` (prompt, response, must-be-free-of-L flag) and `build_sft_batch`;
- `run`: `SASFTConfig`, `SASFTResult`, `run_sasft` (the training loop) and `sft_step`;
- `trainers`: the same loss inside transformers / TRL trainers.
"""

from .data import SFTExample, build_sft_batch, resolve_examples
from .penalty import SASFTPenalty, model_inputs, penalty_mask, response_mask, unlikelihood_loss
from .run import SASFTConfig, SASFTResult, run_sasft, sft_step
from .trainers import SASFTLossMixin, SASFTTrainer, sasft_trainer

__all__ = ["SFTExample", "build_sft_batch", "resolve_examples", "SASFTPenalty", "model_inputs", "penalty_mask",
           "response_mask", "unlikelihood_loss", "SASFTConfig", "SASFTResult", "run_sasft", "sft_step",
           "SASFTLossMixin", "SASFTTrainer", "sasft_trainer"]


def __getattr__(name: str):
    if name == "SASFTSFTTrainer":  # TRL's SFTTrainer + the penalty, built on first use (trl is optional)
        return sasft_trainer()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
