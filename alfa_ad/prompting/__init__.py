"""Prompt sources: where the normal and abnormal descriptions come from."""

from .base import PromptSet, PromptSource, combine
from .templates import AlfaTemplateSource, WinClipEnsembleSource, readable_class_name

__all__ = ["PromptSet", "PromptSource", "combine", "AlfaTemplateSource", "WinClipEnsembleSource", "readable_class_name"]
