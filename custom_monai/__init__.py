"""Shared MONAI components for anatomical landmark detection bundles.

Sub-packages: ``data`` (readers, datalists, demo data), ``transforms`` (landmark-aware
transforms and targets), ``networks``, ``losses``, ``metrics``, ``inferers``, ``handlers``
(writers, reports, time budget), ``analysis`` and ``label`` (MONAI Label app).
"""

__version__ = "0.1.0"

# sub-packages are imported eagerly so that bundle configs can write ``custom_monai.data.…`` after
# ``$import custom_monai`` (``label`` needs MONAI Label and is imported on demand)
from . import data, transforms, networks, losses, metrics, inferers, engines, handlers, analysis  # noqa: E402,F401
