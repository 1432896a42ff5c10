"""custom_monai.transforms: landmark-aware transforms and training targets.

Landmarks stay in the original index frame; the image MetaTensor carries ``meta["landmark_affine"]`` and
every MONAI spatial transform updates ``image.affine``, so :func:`to_grid` / :func:`to_original` map points
between the original image and the current grid.
"""

from .heatmap import (
    LandmarkHeatmap,
    LandmarkHeatmapd,
    LandmarkHeatmapD,
    LandmarkHeatmapDict,
    NormalizedCoordinatesd,
    NormalizedCoordinatesD,
    NormalizedCoordinatesDict,
    gaussian_heatmaps,
    heatmap_argmax,
    heatmap_threshold_mean,
    normalized_to_grid,
)
from .intensity import (
    LUMA_WEIGHTS,
    EnsureGrey,
    EnsureGreyd,
    EnsureGreyD,
    EnsureGreyDict,
    ToGrey,
    ToGreyd,
    intensity_augmentations,
)
from .landmarks import (
    LANDMARK_AFFINE,
    LANDMARK_MASK,
    ORIGINAL_SPATIAL_SHAPE,
    LandmarksToGridd,
    LandmarksToGridD,
    LandmarksToGridDict,
    PrepareLandmarks,
    PrepareLandmarksd,
    PrepareLandmarksD,
    PrepareLandmarksDict,
    index_to_world_lps,
    landmarks_to_array,
    points_inside,
    to_grid,
    to_original,
    world_lps_to_index,
)
from .spatial import (
    CropAroundPoint,
    CropAroundPointd,
    CropAroundPointD,
    CropAroundPointDict,
    CropBox,
    CropBoxd,
    CropBoxD,
    CropBoxDict,
    CropTopRows,
    CropTopRowsd,
    CropTopRowsD,
    CropTopRowsDict,
    RandCropAroundLandmarkd,
    RandLandmarkBoxCropd,
    RandCropAroundLandmarkD,
    RandCropAroundLandmarkDict,
    ResizeLongestPad,
    ResizeLongestPadd,
    ResizeLongestPadD,
    ResizeLongestPadDict,
    landmark_augmentations,
)

# modules written alongside (their own __all__ decides what is public)
from .cell_targets import *  # noqa: F401,F403
from .landmark_patches import *  # noqa: F401,F403
from .masks import *  # noqa: F401,F403
from .presets import *  # noqa: F401,F403
from .rescale import *  # noqa: F401,F403
from .sampling import *  # noqa: F401,F403
from .topdown import *  # noqa: F401,F403
