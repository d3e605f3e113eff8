"""The synthetic phantom's sources: the sites that "sent" its patients and their scanner screens.

Every function takes a NumPy generator and draws from it in a fixed order: the same generator
state always gives the same screen. THE DATA IT MAKES ARE SYNTHETIC: NOT REAL PATIENTS, NOT FOR
ANY CLINICAL USE.
"""

from __future__ import annotations

import cv2
import numpy as np

from covnb.phantom_style import _canonical_label

__all__ = ["PHANTOM_SOURCES", "SCREEN_DESIGNS", "assign_sources", "render_screen"]

#: The sites that "sent" the phantom's patients, and the share of each class's patients each
#: sent. Modelled on the public POCUS data (Born et al. 2021; ``dataset_metadata.csv``): one
#: source sends most bacterial pneumonia and many healthy lungs, another most of the other
#: healthy lungs, and COVID-19 comes from several smaller sources. A patient-grouped split
#: lets a model recognise the site instead of the lung; a source-held-out split does not.
PHANTOM_SOURCES = {
    "site-A": {"pneumonia": 0.80, "regular": 0.45},
    "site-B": {"regular": 0.45, "pneumonia": 0.05},
    "site-C": {"covid": 0.35, "regular": 0.05, "pneumonia": 0.05},
    "site-D": {"covid": 0.25, "pneumonia": 0.05},
    "site-E": {"covid": 0.20, "regular": 0.05},
    "site-F": {"covid": 0.10, "pneumonia": 0.05},
    "site-G": {"covid": 0.10},
}

#: What each site's scanner puts on the screen around the image (and its fan geometry):
#: ``tint`` BGR gains of its colour map, ``scale`` of the sector in the frame, ``half_angle``
#: range of its convex probe (degrees), and the overlays it draws.
SCREEN_DESIGNS = {
    "site-A": {"tint": (1.0, 1.0, 1.0), "scale": 0.86, "half_angle": (23.0, 26.0), "text": "top-left",
               "ruler": "right", "colour_bar": False, "border": None, "logo": None},
    "site-B": {"tint": (0.82, 0.95, 1.08), "scale": 0.78, "half_angle": (19.0, 22.0), "text": "top-right",
               "ruler": "left", "colour_bar": True, "border": None, "logo": "circle"},
    "site-C": {"tint": (1.08, 0.97, 0.82), "scale": 0.80, "half_angle": (17.0, 20.0), "text": "bottom-left",
               "ruler": "right", "colour_bar": True, "border": (90, 160, 90), "logo": None},
    "site-D": {"tint": (1.0, 1.0, 1.0), "scale": 0.92, "half_angle": (21.0, 24.0), "text": "top-left",
               "ruler": None, "colour_bar": False, "border": None, "logo": "square"},
    "site-E": {"tint": (0.9, 1.06, 0.9), "scale": 0.74, "half_angle": (24.0, 28.0), "text": "bottom-right",
               "ruler": "left", "colour_bar": False, "border": (170, 120, 60), "logo": "triangle"},
    "site-F": {"tint": (1.0, 0.92, 1.06), "scale": 0.84, "half_angle": (18.0, 21.0), "text": "top-right",
               "ruler": "right", "colour_bar": True, "border": None, "logo": "circle"},
    "site-G": {"tint": (0.95, 0.95, 0.95), "scale": 0.70, "half_angle": (20.0, 23.0), "text": "top-left",
               "ruler": "left", "colour_bar": False, "border": (60, 60, 200), "logo": None},
}


def assign_sources(n_patients: int, label: str, rng: np.random.Generator) -> list[str]:
    """Source of each of ``n_patients`` patients of ``label``: the shares of
    :data:`PHANTOM_SOURCES` rounded to whole patients (largest remainder), in shuffled order."""
    label = _canonical_label(label)
    shares = {source: classes.get(label, 0.0) for source, classes in PHANTOM_SOURCES.items()}
    total = sum(shares.values())
    exact = {source: n_patients * share / total for source, share in shares.items()}
    counts = {source: int(np.floor(value)) for source, value in exact.items()}
    for source in sorted(exact, key=lambda k: (counts[k] - exact[k], k))[: n_patients - sum(counts.values())]:
        counts[source] += 1
    sources = [source for source, count in counts.items() for _ in range(count)]
    return [sources[i] for i in rng.permutation(len(sources))]


def render_screen(clip: np.ndarray, source: str, rng: np.random.Generator, *, still: bool = False) -> np.ndarray:
    """Put a grey clip (T, S, S) on ``source``'s screen: its colour map, sector size and place,
    text, depth ruler, grey-scale bar, border and logo. Returns BGR frames (T, S, S, 3) uint8.

    The overlays sit outside the fan and never touch it (as on a scanner's screen), so
    :func:`covnb.frames.sector_mask` still finds the fan. Text changes a little per clip
    (time stamp, frame rate), the rest is the site's.
    """
    design = SCREEN_DESIGNS[source]
    n_frames, size = clip.shape[:2]
    inner = max(16, int(round(design["scale"] * size)))
    x0 = (size - inner) // 2 + int(rng.integers(-2, 3))
    y0 = max(0, int(round(0.04 * size)) + int(rng.integers(-1, 2))) if design["text"].startswith("bottom") else \
        size - inner - max(1, int(round(0.02 * size)))
    x0 = int(np.clip(x0, 0, size - inner))
    canvas = np.zeros((n_frames, size, size, 3), np.uint8)
    tint = np.asarray(design["tint"], np.float32)
    for t in range(n_frames):
        small = cv2.resize(clip[t], (inner, inner), interpolation=cv2.INTER_AREA).astype(np.float32)
        canvas[t, y0:y0 + inner, x0:x0 + inner] = np.clip(small[..., None] * tint + 0.5, 0, 255).astype(np.uint8)
    overlay = np.zeros((size, size, 3), np.uint8)
    _screen_text(overlay, source, design["text"], rng, still)
    _screen_scales(overlay, design, tint, x0, y0, inner)
    if design["logo"]:
        _screen_logo(overlay, design, tint)
    if design["border"]:
        cv2.rectangle(overlay, (0, 0), (size - 1, size - 1), tuple(int(c) for c in design["border"]), 1)
    drawn = overlay.any(axis=-1)
    canvas[:, drawn] = overlay[drawn]
    return canvas


def _screen_text(overlay: np.ndarray, source: str, corner: str, rng: np.random.Generator, still: bool) -> None:
    """Probe, frequency, depth, time and frame rate in one corner of the screen."""
    size = overlay.shape[0]
    font_scale = max(0.22, size / 520)
    thickness = 1
    line_height = max(6, int(round(size / 22)))
    lines = [f"{source.upper()} C5-2", f"{rng.uniform(2.5, 5.0):.1f}MHz D{rng.integers(10, 17)}cm",
             f"{int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}" + ("" if still else f" {rng.integers(18, 31)}Hz")]
    for i, text in enumerate(lines):
        (width, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        x = 2 if corner.endswith("left") else size - width - 2
        y = (line_height * (i + 1)) if corner.startswith("top") else size - 3 - line_height * (len(lines) - 1 - i)
        cv2.putText(overlay, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (235, 235, 235), thickness, cv2.LINE_AA)


def _screen_scales(overlay: np.ndarray, design: dict, tint: np.ndarray, x0: int, y0: int, inner: int) -> None:
    """The depth ruler beside the fan and the grey-scale bar, when the design has them."""
    size = overlay.shape[0]
    if design["ruler"]:
        x = max(1, x0 - 4) if design["ruler"] == "left" else min(size - 2, x0 + inner + 3)
        for k, y in enumerate(range(y0, y0 + inner, max(3, inner // 12))):
            cv2.line(overlay, (x - (2 if k % 2 == 0 else 1), y), (x, y), (210, 210, 210), 1)
    if design["colour_bar"]:
        bar_x = 3 if design["ruler"] != "left" else size - 7
        top, bottom = size // 3, 2 * size // 3
        for y in range(top, bottom):
            level = int(255 * (bottom - y) / (bottom - top))
            overlay[y, bar_x:bar_x + 4] = np.clip(np.asarray([level] * 3, np.float32) * tint, 0, 255).astype(np.uint8)


def _screen_logo(overlay: np.ndarray, design: dict, tint: np.ndarray) -> None:
    """The site's logo (circle, square or triangle) in a top corner free of text."""
    size = overlay.shape[0]
    corner = design["text"]
    centre = (size - int(0.08 * size), int(0.08 * size)) if corner != "top-right" else (int(0.08 * size), int(0.08 * size))
    radius = max(2, int(0.035 * size))
    colour = tuple(int(c) for c in np.clip(np.asarray((80, 180, 230)) * tint, 0, 255))
    if design["logo"] == "circle":
        cv2.circle(overlay, centre, radius, colour, -1, cv2.LINE_AA)
    elif design["logo"] == "square":
        cv2.rectangle(overlay, (centre[0] - radius, centre[1] - radius), (centre[0] + radius, centre[1] + radius), colour, -1)
    else:
        points = np.array([[centre[0], centre[1] - radius], [centre[0] - radius, centre[1] + radius],
                           [centre[0] + radius, centre[1] + radius]], np.int32)
        cv2.fillPoly(overlay, [points], colour, cv2.LINE_AA)
