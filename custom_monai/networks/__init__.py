"""Networks, one module per method (plain ``nn.Module``s with typed constructors)."""

from .attention_unet import LandmarkUNet
from .cephmarknet import CEPHMarkNet, PerLandmarkRefinementHeads, SemanticFusionBlock, SharedRefinementHead, count_parameters, crop_and_resize
from .global_local_fcnn import GlobalFCNN, LocalFCNN

__all__ = [
    "CEPHMarkNet",
    "GlobalFCNN",
    "LandmarkUNet",
    "LocalFCNN",
    "PerLandmarkRefinementHeads",
    "SemanticFusionBlock",
    "SharedRefinementHead",
    "count_parameters",
    "crop_and_resize",
]
