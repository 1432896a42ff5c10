"""Networks, one module per method (plain ``nn.Module``s with typed constructors)."""

from .attention_unet import AttentionGuidedUNet, LandmarkUNet
from .dcelr import DCeLR, DCeLRTraining, ViTBlock
from .cephmarknet import CEPHMarkNet, PerLandmarkRefinementHeads, SemanticFusionBlock, SharedRefinementHead, count_parameters, crop_and_resize
from .global_local_fcnn import GlobalFCNN, GlobalToLocalFCNN, LocalFCNN
from .htc import HTCBackbone, HTCLandmarkNet

__all__ = [
    "CEPHMarkNet",
    "DCeLR",
    "DCeLRTraining",
    "ViTBlock",
    "GlobalFCNN",
    "AttentionGuidedUNet",
    "GlobalToLocalFCNN",
    "HTCBackbone",
    "HTCLandmarkNet",
    "LandmarkUNet",
    "LocalFCNN",
    "PerLandmarkRefinementHeads",
    "SemanticFusionBlock",
    "SharedRefinementHead",
    "count_parameters",
    "crop_and_resize",
]
