"""Screening at scale: grade a folder (or a CSV of paths) of photos with the served models, on one process or
many under torchrun, into one resumable grades.csv (see drdemo.screen.cli for the command line)."""

from drdemo.screen.run import screen

__all__ = ["screen"]
