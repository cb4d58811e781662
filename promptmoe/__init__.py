"""PromptMoE: zero-shot anomaly detection with visually-guided prompt mixtures (AAAI 2026).

A teachable reproduction. The book (``book/``) walks through every module; start with
:class:`promptmoe.config.PromptMoEConfig` and :class:`promptmoe.model.PromptMoE`.
"""
from .config import PromptMoEConfig
from .runtime import default_preset, get_device, is_quick, set_seed

__version__ = "0.1.0"
__all__ = ["PromptMoEConfig", "default_preset", "get_device", "is_quick", "set_seed", "__version__"]
