"""custom_monai.data: dataset readers -> datalists, 3D Slicer markups, demo data, inference inputs.

One reader module per public dataset format (``isbi2015``, ``hamedan``, ``hand``, ``chest``,
``cldetection``, ``aariz``, ``markups``); ``scripts/prepare_data.py`` is their command line.
"""

from .datalist import (
    COORDINATE_SPACES,
    SECTIONS,
    atomic_write_text,
    count_missing,
    datalist_section,
    image_id,
    load_datalist,
    split_items,
    summarize_datalist,
    validate_datalist,
    write_datalist,
)
from .demo import CEPH_LANDMARK_NAMES, DEMO_VERSION, demo_cache_dir, demo_datalist, generate_demo_2d, generate_demo_3d
from .errors import DatalistError, LandmarkFileError
from .aariz import build_aariz, read_aariz_json, read_aariz_spacing
from .chest import build_chest, read_normalised_points
from .cldetection import build_cldetection2023, read_cldetection_txt
from .hamedan import HAMEDAN_SPACING, build_hamedan, read_hamedan_annotations, read_labelme_points
from .hand import build_hand
from .isbi2015 import build_isbi2015, read_isbi_csv, read_isbi_txt
from .markups import (
    build_markups,
    index_to_lps,
    lps_to_index,
    read_markups,
    read_verse_centroids,
    write_fcsv,
    write_mrk_json,
    write_points_csv,
)
from .readers import DATASETS, ISBI_LANDMARK_NAMES, get_builder
from .resolve import resolve_datalist
from .safe import IMAGE_EXTENSIONS, SafeDataset, collate_skip_none, folder_items
