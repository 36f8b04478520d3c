"""`qscope plan`: memory and time of a job (capture, steer, footprint, train) for a model and
SAE releases on given hardware, with the formulas, before anything is downloaded or run."""

from .arch import Arch, arch_from_config, load_arch, shipped_configs, transformers_config
from .estimate import TASKS, Plan, Term, Workload, plan, resolve_layers
from .hardware import DEFAULT_EFFICIENCY, PRESETS, Hardware, hardware

__all__ = ["Arch", "arch_from_config", "load_arch", "shipped_configs", "transformers_config", "TASKS", "Plan", "Term",
           "Workload", "plan", "resolve_layers", "DEFAULT_EFFICIENCY", "PRESETS", "Hardware", "hardware"]
