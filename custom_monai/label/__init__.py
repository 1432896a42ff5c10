"""MONAI Label integration: serve any bundle of this repository to 3D Slicer, and train it on saved landmarks.

- :mod:`.bundle` (no MONAI Label import): :class:`~.bundle.LandmarkBundle` runs a bundle's parsed
  ``inference.json`` on one image; the 2D frame 3D Slicer shows an image in; markups -> datalist.
- :mod:`.infer`: :class:`~.infer.LandmarkInferTask`, the infer task (landmarks as a 3D Slicer point list).
- :mod:`.train`: :class:`~.train.LandmarkTrainTask`, datastore landmarks -> datalist -> ``monai.bundle run training``.
- :mod:`.app`: :class:`~.app.LandmarkLabelApp`, the app (``scripts/label_app/main.py`` imports it).

:mod:`.infer`, :mod:`.train` and :mod:`.app` need ``monailabel`` (the ``label`` extra, in its own environment:
``.ci/label_env.sh``), so they are not imported here.
"""

from .bundle import LandmarkBundle, LandmarkInferenceError, lps_to_pixel_2d, markups_datalist, slicer_lps_2d

__all__ = ["LandmarkBundle", "LandmarkInferenceError", "lps_to_pixel_2d", "markups_datalist", "slicer_lps_2d"]
