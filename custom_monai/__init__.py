"""Shared MONAI components for anatomical landmark detection bundles.

Sub-packages: ``data`` (readers, datalists, demo data), ``transforms`` (landmark-aware
transforms and targets), ``networks``, ``losses``, ``metrics``, ``inferers``, ``handlers``
(writers, reports, time budget), ``analysis`` and ``label`` (MONAI Label app).
"""

__version__ = "0.1.0"
