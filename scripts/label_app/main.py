"""MONAI Label app folder: serves the landmark bundles of this repository (see custom_monai/label/app.py).

    monailabel start_server --app scripts/label_app --studies IMAGES --conf bundles NAME[,NAME] --conf ckpt_NAME PATH
"""

from custom_monai.label.app import LandmarkLabelApp  # noqa: F401 - MONAI Label looks for a MONAILabelApp subclass here
