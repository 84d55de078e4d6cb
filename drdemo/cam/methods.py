"""The CAM methods the app offers, as facts: their names, what people read, and which ignore the class.

Kept apart from drdemo.cam.explain, which binds each name to its pytorch-grad-cam class, so that
validating a checkpoint's config.json or writing its model card needs neither pytorch-grad-cam
nor OpenCV.
"""

from __future__ import annotations

# Method name (config.json's cam_method) -> the name shown to people, in the order the app lists them.
CAM_METHOD_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "xgradcam": "XGrad-CAM",
                    "layercam": "LayerCAM", "hirescam": "HiResCAM", "eigencam": "EigenCAM"}
# Maps that do not depend on the class asked for: EigenCAM shows the layer's strongest activation
# pattern (its first principal component), so it says where the features respond, not which grade they support.
CLASS_INDEPENDENT_METHODS = frozenset({"eigencam"})
