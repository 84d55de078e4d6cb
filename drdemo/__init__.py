"""drdemo: diabetic retinopathy grading demo with MedMamba and InceptionV3."""

__version__ = "0.1.0"
