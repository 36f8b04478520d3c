"""Application 4: SAE-guided post-training (SASFT against code-switching, SAE-guided GRPO
against repetition)."""

from .grpo import GRPOConfig, GRPOResult, add_lora, default_reward, group_advantages, grpo_step, sample_groups, train_grpo
from ..data.language import code_switch_ratio, contains_language, detect_languages  # public here too
from .language_features import (LanguageFeatureSet, choose_language_features, estimate_alphas, monolinguality,
                                script_token_ids, selection_split)
from .repetition import causal_check, repetition_features, repetition_ratio, repetitive_corpus
from .sasft import (SASFTConfig, SASFTLossMixin, SASFTPenalty, SASFTResult, SASFTTrainer, SFTExample, build_sft_batch,
                    run_sasft, sasft_trainer, sft_step, unlikelihood_loss)

__all__ = [
    "GRPOConfig", "GRPOResult", "add_lora", "default_reward", "group_advantages", "grpo_step", "sample_groups", "train_grpo",
    "code_switch_ratio", "contains_language", "detect_languages", "estimate_alphas", "monolinguality", "script_token_ids",
    "LanguageFeatureSet", "choose_language_features", "selection_split",
    "causal_check", "repetition_features", "repetition_ratio", "repetitive_corpus",
    "SASFTConfig", "SASFTLossMixin", "SASFTPenalty", "SASFTResult", "SASFTTrainer", "SFTExample", "build_sft_batch",
    "run_sasft", "sasft_trainer", "sft_step", "unlikelihood_loss",
]  # plus SASFTSFTTrainer, left out of * so that it stays importable without trl


def __getattr__(name: str):
    if name == "SASFTSFTTrainer":  # TRL's SFTTrainer + the penalty, built on first use (trl is optional)
        return sasft_trainer()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
