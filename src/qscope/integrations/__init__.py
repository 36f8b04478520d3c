"""Adapters that let other tools run qscope: lm-evaluation-harness (`qscope.integrations.lm_eval`)."""
