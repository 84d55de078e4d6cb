"""The Gradio interface. Builds views from predictors; never touches tensors."""

from drdemo.ui.blocks import build_demo

__all__ = ["build_demo"]
