"""The Gradio interface: `page` lays out the components, `handlers` answers requests, `views` words and
draws the results. Builds views from predictors; never touches tensors."""

from drdemo.ui.page import build_demo

__all__ = ["build_demo"]
