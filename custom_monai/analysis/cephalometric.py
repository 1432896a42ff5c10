"""Cephalometric measurements and their clinical classes from the 19 ISBI 2015 landmarks.

The eight measurements of the ISBI 2015 challenge (its second task, "classification of anatomical
types"): ANB, SNB, SNA, ODI, APDI, FHI, FMA, MW, with the definitions and class thresholds of
C.-W. Wang et al., "A benchmark for comparison of dental radiography analysis algorithms",
Medical Image Analysis 31 (2016) 63-76 -- the paper's table of the eight measurements (landmarks
L1..L19 in the challenge order) and their classification criteria. Everything the paper fixes is in
ONE table, :data:`MEASUREMENTS`; the code below only evaluates it.

Readings of the paper that the table makes explicit (the signs and plane directions agree with a public
ISBI 2015 classification script: an independent re-implementation of its formulas gives the same values,
to 1e-10, on all 400 senior annotations):

- ANB is signed (= SNA - SNB, positive when A lies in front of B): Class III is "< 3.2 deg", which
  includes the negative angles of a mandible in front of the maxilla.
- ODI and APDI add the angles between planes in the clinical sense of Kim's indices (ODI's AB-plane
  to mandibular-plane angle between B->A and Me->Go, ~74 deg normal); the palatal-plane and AB-plane terms
  are signed: the palatal plane counts positive when its anterior end (ANS) is tipped down relative to FH,
  the AB term positive when B is in front of A relative to the facial plane (N-Pog).
- FMA is, as the paper defines it, the angle between the SN line (L1-L2) and the Go-Gn line (L10-L9),
  not Frankfort's; the thresholds 26.8-31.4 deg belong to that definition.
- MW is the incisor distance |L12 - L11| in mm, positive when the upper incisor tip (L12) is in front of
  the lower one (L11) along the image's x axis, as the paper has it. The paper names class 2 "edge to
  edge (MW = 0 mm)" and leaves 0 < MW < 2 mm in no class; here class 2 is 0 <= MW < 2 mm, so that every
  value has a class (58 of the 400 ISBI senior annotations fall in 0 < MW < 2 mm).
- "In front of" means along the facing direction of the image: +x when the face looks right (ISBI,
  Hamedan), -x for mirrored images. It is taken from whichever of S->N, Po->Or, PNS->ANS, Go->Me are
  present (not from the measurement's own landmarks), so signs survive mirroring. Rotating the image by
  less than ~90 deg changes no angle or ratio; MW's sign follows the x axis (the paper's rule), so it can
  flip for a nearly vertical incisor pair in a rotated image.

Distances and angles are computed in millimetres (per-axis pixel spacing), so non-square pixels are
handled; without a spacing the angles and FHI are computed in pixels (square pixels assumed) and MW is
``None``. A measurement whose landmarks are missing (NaN) is ``None`` with a ``reason``, never a guess.

Landmark roles are found by name, in any order: the repository's names (``sella``, ...,
``articulare``, :data:`~custom_monai.data.readers.ISBI_LANDMARK_NAMES`), the usual symbols and names
(``S``, ``Subspinale/A``, ``PNS``, ``Pog'``, ``LIT``, ...; e.g. the Aariz names), or the challenge
numbering ``L1``..``L19`` / Hamedan's ``l1``..``l19`` (the demo data's names) when all 19 names are
numbers.

Human reference (``python scripts/analysis_agreement.py``; ISBI pixel = mm / 0.1, Hamedan 0.127 mm/px, an
estimate that only scales MW): class agreement between two annotators' landmarks in % / mean absolute
difference of the values (deg; FHI as a ratio; MW in mm), and the mean value of the reference annotator::

             ISBI senior vs junior, 400 img    Hamedan farhadifar vs mollabashi, 100 img   mean ISBI / Hamedan
    ANB      78.0 % / 1.37                     73.7 % / 0.94                               2.37 / 3.38
    SNB      82.0 % / 1.78                     83.0 % / 1.18                               80.89 / 77.75
    SNA      67.8 % / 2.39                     70.7 % / 1.74                               83.26 / 81.14
    ODI      77.0 % / 4.09                     78.6 % / 2.72                               69.67 / 72.14
    APDI     82.2 % / 2.86                     75.3 % / 2.04                               85.55 / 81.20
    FHI      84.2 % / 0.019                    86.0 % / 0.016                              0.650 / 0.638
    FMA      82.0 % / 1.95                     87.0 % / 1.55                               32.82 / 34.89
    MW       84.2 % / 0.63                     78.6 % / 0.72                               2.50 / 3.82

The Hamedan means are the same anatomy as ISBI's (SNA 81, SNB 78, ANB 3.4 deg, positive overjet) and, in a
frame fixed to S and N, the best one-to-one matching of Hamedan's mean landmark positions to ISBI's is the
identity: Hamedan's ``l1``..``l19`` follow the ISBI order.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from custom_monai.data.readers import ISBI_LANDMARK_NAMES

__all__ = [
    "ISBI_SYMBOLS",
    "MeasurementClass",
    "Measurement",
    "MEASUREMENTS",
    "landmark_roles",
    "is_isbi_landmark_set",
    "classify",
    "cephalometric_measurements",
    "MeasurementAccumulator",
    "summary_line",
]

INF = math.inf

ISBI_SYMBOLS: tuple[str, ...] = (
    "S", "N", "Or", "Po", "A", "B", "Pog", "Me", "Gn", "Go",
    "LIT", "UIT", "UL", "LL", "Sn", "Pog'", "PNS", "ANS", "Ar",
)  # fmt: skip
"""Short symbols of the 19 ISBI landmarks, in the challenge order (aligned with ``ISBI_LANDMARK_NAMES``)."""


@dataclass(frozen=True)
class MeasurementClass:
    """One class of a measurement: ``number`` (1-based, as in the challenge) for values in [low, high].

    ``include_low`` / ``include_high`` say whether the interval ends belong to this class.
    """

    number: int
    name: str
    low: float = -INF
    high: float = INF
    include_low: bool = True
    include_high: bool = True

    def contains(self, value: float) -> bool:
        above = value >= self.low if self.include_low else value > self.low
        below = value <= self.high if self.include_high else value < self.high
        return above and below


@dataclass(frozen=True)
class Measurement:
    """A row of :data:`MEASUREMENTS`: what is measured, from which landmarks, and its classes.

    ``formula`` gets a :class:`_Geometry` (landmarks by symbol, mm) and returns the value; ``lines`` are
    the segments drawn on the analysis overlay.
    """

    key: str
    title: str
    unit: str
    landmarks: tuple[str, ...]
    definition: str
    formula: Callable[[_Geometry], float]
    classes: tuple[MeasurementClass, ...]
    lines: tuple[tuple[str, str], ...]


def _three(
    low: float, high: float, normal: str, above: tuple[int, str], below: tuple[int, str]
) -> tuple[MeasurementClass, ...]:
    """The challenge's three-class pattern: 1 = ``normal`` for low <= v <= high, ``above`` / ``below`` =
    (number, name) for v > high / v < low."""
    return tuple(
        sorted(
            (
                MeasurementClass(1, normal, low, high),
                MeasurementClass(*above, low=high, include_low=False),
                MeasurementClass(*below, high=low, include_high=False),
            ),
            key=lambda c: c.number,
        )
    )


# fmt: off
MEASUREMENTS: tuple[Measurement, ...] = (
    Measurement(
        "ANB", "ANB angle", "deg", ("A", "N", "B"),
        "angle L5-L2-L6 (A-N-B), signed: positive when A is in front of B (= SNA - SNB)",
        lambda g: g.turn("N", "A", "N", "B"),
        _three(3.2, 5.7, "Class I (normal)", above=(2, "Class II"), below=(3, "Class III")),
        (("N", "A"), ("N", "B")),
    ),
    Measurement(
        "SNB", "SNB angle", "deg", ("S", "N", "B"),
        "angle L1-L2-L6 (S-N-B)",
        lambda g: g.angle("N", "S", "N", "B"),
        _three(74.6, 78.7, "normal mandible", above=(3, "prognathic mandible"), below=(2, "retrognathic mandible")),
        (("S", "N"), ("N", "B")),
    ),
    Measurement(
        "SNA", "SNA angle", "deg", ("S", "N", "A"),
        "angle L1-L2-L5 (S-N-A)",
        lambda g: g.angle("N", "S", "N", "A"),
        _three(79.4, 83.2, "normal maxilla", above=(2, "prognathic maxilla"), below=(3, "retrognathic maxilla")),
        (("S", "N"), ("N", "A")),
    ),
    Measurement(
        "ODI", "overbite depth indicator", "deg", ("A", "B", "Me", "Go", "Po", "Or", "PNS", "ANS"),
        "angle of AB plane (L5-L6) to mandibular plane (L8-L10) + signed angle of palatal plane (L17-L18) "
        "to FH plane (L4-L3)",
        lambda g: g.angle("B", "A", "Me", "Go") + g.turn("Po", "Or", "PNS", "ANS"),
        _three(68.4, 80.5, "normal", above=(2, "deep bite tendency"), below=(3, "open bite tendency")),
        (("A", "B"), ("Go", "Me"), ("PNS", "ANS"), ("Po", "Or")),
    ),
    Measurement(
        "APDI", "anteroposterior dysplasia indicator", "deg", ("Po", "Or", "N", "Pog", "A", "B", "PNS", "ANS"),
        "angle of FH plane (L3-L4) to facial plane (L2-L7) + signed angle of facial plane to AB plane (L5-L6) "
        "+ signed angle of FH plane to palatal plane (L17-L18)",
        lambda g: g.angle("Or", "Po", "N", "Pog") + g.turn("A", "B", "N", "Pog") + g.turn("Po", "Or", "PNS", "ANS"),
        _three(77.6, 85.2, "normal", above=(3, "Class III tendency"), below=(2, "Class II tendency")),
        (("Po", "Or"), ("N", "Pog"), ("A", "B"), ("PNS", "ANS")),
    ),
    Measurement(
        "FHI", "facial height index", "ratio", ("S", "Go", "N", "Me"),
        "posterior face height |L1-L10| (S-Go) / anterior face height |L2-L8| (N-Me)",
        lambda g: g.dist("S", "Go") / g.dist("N", "Me"),
        _three(0.65, 0.75, "normal", above=(2, "short face tendency"), below=(3, "long face tendency")),
        (("S", "Go"), ("N", "Me")),
    ),
    Measurement(
        "FMA", "Frankfort mandibular angle (as defined by the challenge)", "deg", ("S", "N", "Go", "Gn"),
        "angle between SN line (L1-L2) and mandibular line Go-Gn (L10-L9)",
        lambda g: g.angle("S", "N", "Go", "Gn"),
        _three(
            26.8, 31.4, "normal", above=(2, "mandible high angle tendency"), below=(3, "mandible low angle tendency")
        ),
        (("S", "N"), ("Go", "Gn")),
    ),
    Measurement(
        "MW", "modified Wits appraisal", "mm", ("LIT", "UIT"),
        "|L12-L11| (upper to lower incisal incision) in mm, negative when L12 is behind L11",
        lambda g: g.dist("LIT", "UIT") * (1.0 if g.ahead("LIT", "UIT") >= 0 else -1.0),
        (
            MeasurementClass(1, "normal", 2.0, 4.5),
            MeasurementClass(2, "edge to edge", 0.0, 2.0, include_high=False),
            MeasurementClass(3, "anterior cross bite", -INF, 0.0, include_high=False),
            MeasurementClass(4, "large over jet", 4.5, INF, include_low=False),
        ),
        (("LIT", "UIT"),),
    ),
)
"""The ISBI 2015 measurements (Wang et al. 2016): definitions, landmarks and class thresholds."""
# fmt: on

_BY_KEY = {m.key: m for m in MEASUREMENTS}
_ROLE_OF_SYMBOL = dict(zip(ISBI_SYMBOLS, ISBI_LANDMARK_NAMES))
_FACING_PAIRS = (("S", "N"), ("Po", "Or"), ("PNS", "ANS"), ("Go", "Me"))  # each points forward (anterior)

# more names for each role (normalised by _norm); the role's own name and symbol are always accepted
_SYNONYMS: dict[str, tuple[str, ...]] = {
    "sella": ("sella_turcica",),
    "nasion": ("na",),
    "subspinale": ("a_point", "point_a", "subspinale_a"),
    "supramentale": ("b_point", "point_b", "supramentale_b"),
    "pogonion": ("pg",),
    "lower_incisal_incision": ("lower_incisor_tip", "lower_incisor", "incision_inferius"),
    "upper_incisal_incision": ("upper_incisor_tip", "upper_incisor", "incision_superius"),
    "upper_lip": ("labrale_superius", "ls"),
    "lower_lip": ("labrale_inferius", "li"),
    "soft_tissue_pogonion": ("soft_pogonion", "pogonion_prime"),
}
_INDEX_NAME = re.compile(r"l(\d+)")


def _norm(name: Any) -> str:
    """Lower case, primes -> ``_prime``, other punctuation/space -> ``_``: ``"Subspinale/A"`` -> ``subspinale_a``."""
    s = re.sub(r"['`\u2032\u2019]", "_prime", str(name).strip().lower())
    return re.sub(r"[^a-z0-9]+", "_", s).strip("_")


_ALIASES: dict[str, str] = {}
for _sym, _role in _ROLE_OF_SYMBOL.items():
    for _alias in (_role, _sym, *_SYNONYMS.get(_role, ())):
        _ALIASES[_norm(_alias)] = _role


def landmark_roles(names: Sequence[str]) -> dict[str, int]:
    """``{ISBI landmark name: index in names}`` for the ISBI landmarks that ``names`` identify.

    Nineteen names that are all ``L<k>``/``l<k>`` (k = 1..19) are the challenge numbering; otherwise each
    name is matched to a role by name or symbol (unknown names are ignored). Raises ``ValueError`` when two
    names claim the same role.
    """
    norm = [_norm(n) for n in names]
    numbers = [m and int(m.group(1)) for m in (_INDEX_NAME.fullmatch(n) for n in norm)]
    if len(norm) == 19 and sorted(k or 0 for k in numbers) == list(range(1, 20)):
        return {ISBI_LANDMARK_NAMES[k - 1]: i for i, k in enumerate(numbers)}
    found: dict[str, list[int]] = {}
    for i, n in enumerate(norm):
        if n in _ALIASES:
            found.setdefault(_ALIASES[n], []).append(i)
    clash = {role: [names[i] for i in idx] for role, idx in found.items() if len(idx) > 1}
    if clash:
        raise ValueError(f"several landmark names for the same ISBI landmark: {clash}")
    return {role: idx[0] for role, idx in found.items()}


def is_isbi_landmark_set(names: Sequence[str]) -> bool:
    """True when ``names`` identify all 19 ISBI landmarks (the condition for writing ``measurements``)."""
    try:
        return len(landmark_roles(names)) == len(ISBI_LANDMARK_NAMES)
    except ValueError:
        return False


def classify(key: str, value: float | None) -> tuple[int, str] | tuple[None, None]:
    """``(class number, class name)`` of ``value`` for measurement ``key`` (``(None, None)`` for ``None``/NaN)."""
    if value is None or not math.isfinite(value):
        return None, None
    for c in _BY_KEY[key].classes:
        if c.contains(value):
            return c.number, c.name
    raise AssertionError(f"{key}: no class contains {value}")  # the table covers the real line


class _Geometry:
    """Landmarks by symbol (mm, or px without spacing) and the image's facing sign (+1 = face looks to +x)."""

    def __init__(self, points: Mapping[str, np.ndarray]):
        self.p = points
        forward = [points[b] - points[a] for a, b in _FACING_PAIRS if a in points and b in points]
        fx = sum(v[0] / n for v in forward if (n := float(np.hypot(*v))) > 0)
        self.facing = -1.0 if fx < 0 else 1.0

    def _unit(self, a: str, b: str) -> np.ndarray:
        v = self.p[b] - self.p[a]
        n = float(np.hypot(*v))
        if n == 0.0:
            raise ZeroDivisionError(f"{a} and {b} coincide")
        return v / n

    def angle(self, a: str, b: str, c: str, d: str) -> float:
        """Unsigned angle (deg, 0..180) between the vectors a->b and c->d."""
        u, v = self._unit(a, b), self._unit(c, d)
        return math.degrees(math.atan2(abs(u[0] * v[1] - u[1] * v[0]), float(u @ v)))

    def turn(self, a: str, b: str, c: str, d: str) -> float:
        """Signed angle (deg) from a->b to c->d, positive = clockwise on a right-facing image (rows downwards)."""
        u, v = self._unit(a, b), self._unit(c, d)
        return self.facing * math.degrees(math.atan2(u[0] * v[1] - u[1] * v[0], float(u @ v)))

    def dist(self, a: str, b: str) -> float:
        return float(np.hypot(*(self.p[b] - self.p[a])))

    def ahead(self, a: str, b: str) -> float:
        """How far b is in front of a along the facing direction."""
        return self.facing * float(self.p[b][0] - self.p[a][0])


def _spacing_xy(spacing: Any) -> np.ndarray | None:
    """(2,) mm per pixel, or ``None`` when unknown (``None`` or NaN)."""
    if spacing is None:
        return None
    if hasattr(spacing, "detach"):
        spacing = spacing.detach().cpu().numpy()
    s = np.broadcast_to(np.asarray(spacing, dtype=np.float64).reshape(-1), (2,))
    if not np.all(np.isfinite(s)):
        return None
    if np.any(s <= 0):
        raise ValueError(f"spacing must be positive, got {s.tolist()}")
    return s


def cephalometric_measurements(points: Any, landmark_names: Sequence[str], spacing: Any = None) -> dict[str, dict]:
    """The eight ISBI 2015 measurements of one image.

    Args:
        points: (N, 2) landmarks (x = column, y = row) in pixels; NaN rows are missing.
        landmark_names: N names, any order (see :func:`landmark_roles`).
        spacing: mm per pixel, a number or (sx, sy); ``None`` -> angles/FHI in pixels, MW ``None``.

    Returns:
        ``{key: {"value", "unit", "class", "class_name"}}`` in the order of :data:`MEASUREMENTS`; a value
        that cannot be computed is ``None`` (class too) with a ``"reason"``.
    """
    if hasattr(points, "detach"):
        points = points.detach().cpu().numpy()
    pts = np.array(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) != len(landmark_names):
        raise ValueError(f"points must be (N, 2) with N = {len(landmark_names)} names, got shape {pts.shape}")
    roles = landmark_roles(landmark_names)
    sp = _spacing_xy(spacing)
    if sp is not None:
        pts = pts * sp
    known = {sym: pts[roles[role]] for sym, role in _ROLE_OF_SYMBOL.items() if role in roles}
    absent = {sym for sym in ISBI_SYMBOLS if sym not in known}
    nan = {sym for sym, p in known.items() if not np.all(np.isfinite(p))}
    geometry = _Geometry({sym: p for sym, p in known.items() if sym not in nan})
    out: dict[str, dict] = {}
    for m in MEASUREMENTS:
        value, reason = None, None
        if absent & set(m.landmarks):
            reason = "not in the landmark set: " + ", ".join(_ROLE_OF_SYMBOL[s] for s in m.landmarks if s in absent)
        elif nan & set(m.landmarks):
            reason = "missing landmark: " + ", ".join(_ROLE_OF_SYMBOL[s] for s in m.landmarks if s in nan)
        elif m.unit == "mm" and sp is None:
            reason = "pixel spacing unknown (needed for mm)"
        else:
            try:
                value = float(m.formula(geometry))
            except ZeroDivisionError as e:
                reason = f"degenerate geometry ({e})"
        number, name = classify(m.key, value)
        entry: dict[str, Any] = {"value": value, "unit": m.unit, "class": number, "class_name": name}
        if reason is not None:
            entry["reason"] = reason
        out[m.key] = entry
    return out


class MeasurementAccumulator:
    """Predicted vs reference measurements over many images: MAE and class accuracy per measurement.

    One implementation for the evaluation report (``LandmarkReportHandler``, ``scripts/score.py``) and the
    human reference (``scripts/analysis_agreement.py``, one annotator as "prediction"). Landmark sets that are
    not the ISBI 19 (``enabled`` false) and 3D points are ignored.

    Args:
        landmark_names: names in landmark order.
    """

    def __init__(self, landmark_names: Sequence[str]):
        self.landmark_names = [str(n) for n in landmark_names]
        self.enabled = is_isbi_landmark_set(self.landmark_names)
        self.reset()

    def reset(self) -> None:
        self.ids: list[str] = []
        self.pred: list[dict[str, dict]] = []
        self.ref: list[dict[str, dict]] = []

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, image_id: str, pred: Any, gt: Any, spacing: Any = None) -> None:
        """Add one image's (N, 2) predicted and ground-truth points (pixels) with its spacing."""
        if not self.enabled or np.shape(pred)[-1] != 2:
            return
        self.ids.append(str(image_id))
        self.pred.append(cephalometric_measurements(pred, self.landmark_names, spacing))
        self.ref.append(cephalometric_measurements(gt, self.landmark_names, spacing))

    def records(self) -> list[dict[str, Any]]:
        """One row per (image, measurement): id, measurement, unit, pred/gt value and class, abs_error."""
        rows = []
        for iid, p, g in zip(self.ids, self.pred, self.ref):
            for m in MEASUREMENTS:
                pv, gv = p[m.key]["value"], g[m.key]["value"]
                rows.append({
                    "id": iid, "measurement": m.key, "unit": m.unit,
                    "pred_value": pv, "gt_value": gv,
                    "abs_error": None if pv is None or gv is None else abs(pv - gv),
                    "pred_class": p[m.key]["class"], "gt_class": g[m.key]["class"],
                })  # fmt: skip
        return rows

    def summary(self) -> dict[str, Any]:
        """The ``measurements`` block of ``metrics.json``.

        Per measurement: ``n`` (images with a reference value), ``n_not_found`` (reference but no prediction),
        ``mae`` (in ``unit``, over images with both), ``mean_pred``/``mean_gt``, ``accuracy`` (% of the ``n``
        images whose predicted class equals the reference class; no prediction counts as wrong, as in SDR),
        ``balanced_accuracy`` (mean per-class recall over the reference classes present) and ``confusion``
        (rows = reference class, columns = predicted class, ``classes`` in order).
        """
        out: dict[str, Any] = {"n_images": len(self), "reference": "Wang et al., Med. Image Anal. 31 (2016)"}
        for m in MEASUREMENTS:
            pv = np.array([np.nan if p[m.key]["value"] is None else p[m.key]["value"] for p in self.pred])
            gv = np.array([np.nan if g[m.key]["value"] is None else g[m.key]["value"] for g in self.ref])
            pc = [p[m.key]["class"] for p in self.pred]
            gc = [g[m.key]["class"] for g in self.ref]
            has_gt = np.isfinite(gv)
            both = has_gt & np.isfinite(pv)
            numbers = [c.number for c in m.classes]
            confusion = np.zeros((len(numbers), len(numbers)), dtype=int)
            for a, b in zip(gc, pc):
                if a is not None and b is not None:
                    confusion[numbers.index(a), numbers.index(b)] += 1
            correct = sum(a is not None and a == b for a, b in zip(gc, pc))
            recalls = [confusion[i, i] / n for i, n in enumerate(np.bincount(
                [numbers.index(a) for a in gc if a is not None], minlength=len(numbers))) if n]  # fmt: skip
            n = int(has_gt.sum())
            out[m.key] = {
                "unit": m.unit,
                "n": n,
                "n_not_found": int((has_gt & ~both).sum()),
                "mae": float(np.abs(pv - gv)[both].mean()) if both.any() else None,
                "mean_pred": float(pv[both].mean()) if both.any() else None,
                "mean_gt": float(gv[has_gt].mean()) if n else None,
                "accuracy": 100.0 * correct / n if n else None,
                "balanced_accuracy": 100.0 * float(np.mean(recalls)) if recalls else None,
                "confusion": {"classes": [f"{c.number} {c.name}" for c in m.classes], "matrix": confusion.tolist()},
            }
        return out


def summary_line(block: Mapping[str, Any]) -> str:
    """One log line from a ``measurements`` block: class accuracy and MAE per measurement."""
    parts = []
    for m in MEASUREMENTS:
        r = block[m.key]
        if r["accuracy"] is None:
            parts.append(f"{m.key} n/a")
            continue
        mae = "n/a" if r["mae"] is None else f"{r['mae']:.3f}" if m.unit == "ratio" else f"{r['mae']:.2f} {m.unit}"
        parts.append(f"{m.key} {r['accuracy']:.1f}% (MAE {mae})")
    return f"cephalometric class accuracy ({block['n_images']} images): " + ", ".join(parts)
