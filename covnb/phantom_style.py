"""The synthetic lung-ultrasound phantom's patients: class labels and per-patient styles.

A style is the look of one patient (geometry, gain, scanner settings and the class findings),
drawn from a NumPy generator in a fixed order: the same generator state always gives the same
patient. What is drawn and why is described in :mod:`covnb.phantom`. THE DATA IT MAKES ARE
SYNTHETIC: NOT REAL PATIENTS, NOT FOR ANY CLINICAL USE.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PHANTOM_CLASSES", "sample_patient_style"]

PHANTOM_CLASSES = ("covid", "pneumonia", "regular")

_ALIASES = {
    "covid": "covid",
    "covid-19": "covid",
    "cov": "covid",
    "pneumonia": "pneumonia",
    "bacterial pneumonia": "pneumonia",
    "pneu": "pneumonia",
    "regular": "regular",
    "healthy": "regular",
    "reg": "regular",
}


def _canonical_label(label: str) -> str:
    key = str(label).strip().lower()
    if key not in _ALIASES:
        raise ValueError(
            f"Unknown phantom label {label!r}: expected one of {', '.join(PHANTOM_CLASSES)}."
        )
    return _ALIASES[key]


# --------------------------------------------------------------------------- styles


def sample_patient_style(label: str, rng: np.random.Generator, *, borderline: bool = False) -> dict:
    """Draw the per-patient look: geometry, gain and the class findings (plain floats/lists).

    Depths are fractions of the imaged depth, lateral positions fractions of the sector width.
    Every patient also draws how the scanner was set (:func:`_scanner_settings`: time-gain
    curve, dynamic range, probe frequency as speckle grain, noise floor). ``borderline``: the
    findings are faint (one or two weak B-lines, a small consolidation, A-lines with an
    isolated B-line), as in early or mild disease (Soldati et al. 2020 score 1 patterns).
    """
    label = _canonical_label(label)
    if borderline:
        return _borderline_style(label, rng)
    style: dict = {
        "label": label,
        "half_angle_deg": float(rng.uniform(18.0, 23.0)),
        "pleura_depth": float(rng.uniform(0.19, 0.27)),
        "gain": float(rng.uniform(0.85, 1.15)),
        "tissue_echo": float(rng.uniform(0.2, 0.28)),
        "lung_echo": float(rng.uniform(0.12, 0.17)),
        "fascia_depths": sorted(float(x) for x in rng.uniform(0.25, 0.8, size=int(rng.integers(1, 3)))),
        "slide_amplitude": float(rng.uniform(0.012, 0.03)),
        "breath_period_frames": float(rng.uniform(14.0, 28.0)),
        "ribs": [side for side in (0, 1) if rng.random() < 0.6],
        "pleura_irregularity": 0.0,
        "pleura_gaps": [],
        "b_lines": [],
        "a_lines": 0,
        "consolidation": None,
        "bronchograms": [],
    }
    lo, hi = (0.2 if 0 in style["ribs"] else 0.1), (0.8 if 1 in style["ribs"] else 0.9)
    if label == "regular":
        style["a_lines"] = int(rng.integers(3, 6))
    elif label == "covid":
        _draw_covid_findings(style, rng, lo, hi)
    elif label == "pneumonia":
        _draw_pneumonia_findings(style, rng)
    style.update(_scanner_settings(rng))
    return style


def _draw_covid_findings(style: dict, rng: np.random.Generator, lo: float, hi: float) -> None:
    """COVID-19 findings: B-lines between ``lo`` and ``hi`` (clear of the ribs), an irregular
    pleura with gaps (Soldati et al. 2020)."""
    n_lines = int(rng.integers(2, 6))
    centres = np.sort(rng.uniform(lo, hi, size=n_lines))
    style["b_lines"] = [
        {
            "u": float(c),
            "width": float(rng.uniform(0.008, 0.02) * (2.5 if rng.random() < 0.25 else 1.0)),
            "strength": float(rng.uniform(0.75, 1.0)),
        }
        for c in centres
    ]
    style["pleura_irregularity"] = float(rng.uniform(0.008, 0.016))
    n_gaps = int(rng.integers(2, 5))
    style["pleura_gaps"] = [
        [float(c), float(rng.uniform(0.02, 0.05))] for c in rng.uniform(0.1, 0.9, size=n_gaps)
    ]


def _draw_pneumonia_findings(style: dict, rng: np.random.Generator) -> None:
    """Bacterial pneumonia findings: a subpleural consolidation with branching air bronchograms,
    A-lines in half of the patients."""
    centre = float(rng.uniform(0.42, 0.58))
    half_width = float(rng.uniform(0.3, 0.4))
    height = float(rng.uniform(0.2, 0.3))
    style["consolidation"] = {"u": centre, "half_width": half_width, "height": height}
    style["a_lines"] = int(rng.integers(2, 4)) if rng.random() < 0.5 else 0
    trees = []
    for _ in range(int(rng.integers(3, 6))):
        start_u = centre + rng.uniform(-0.55, 0.55) * half_width
        start_d = rng.uniform(0.1, 0.4) * height
        angle = rng.uniform(-1.2, 1.2)  # radians from the depth axis
        length = rng.uniform(0.25, 0.45) * height
        trees.append(
            {
                "u": float(start_u),
                "d": float(start_d),
                "angle": float(angle),
                "length": float(length),
                "branches": [float(rng.uniform(0.35, 0.75)) for _ in range(int(rng.integers(1, 3)))],
                "branch_angles": [float(rng.choice([-1, 1]) * rng.uniform(0.35, 0.6)) for _ in range(2)],
            }
        )
    style["bronchograms"] = trees


def _scanner_settings(rng: np.random.Generator) -> dict:
    """How one patient was scanned: gain knobs, probe and noise, shared by all their clips.

    ``tgc``: time-gain compensation, gains at depths 0, 1/3, 2/3 and 1 of the image;
    ``dynamic_range``: log-compression steepness; ``speckle_grain``: speckle size (a lower
    probe frequency gives coarser grain); ``noise_floor``: electronic haze inside the sector;
    ``gain``: overall gain (replaces the narrower draw of the class findings).
    """
    return {
        "gain": float(rng.uniform(0.7, 1.35)),
        "tgc": [float(g) for g in rng.uniform(0.7, 1.3, size=4)],
        "dynamic_range": float(rng.uniform(1.0, 2.4)),
        "speckle_grain": float(rng.uniform(0.7, 1.6)),
        "noise_floor": float(rng.uniform(0.0, 0.08)),
    }


def _borderline_style(label: str, rng: np.random.Generator) -> dict:
    """A faint version of ``label``'s findings: what makes real cases hard to call."""
    style = sample_patient_style(label, rng)
    lo, hi = (0.2 if 0 in style["ribs"] else 0.1), (0.8 if 1 in style["ribs"] else 0.9)
    if label == "covid":
        n_lines = int(rng.integers(1, 3))
        style["b_lines"] = [{"u": float(c), "width": float(rng.uniform(0.007, 0.012)),
                             "strength": float(rng.uniform(0.22, 0.42))}
                            for c in np.sort(rng.uniform(lo, hi, size=n_lines))]
        style["pleura_irregularity"] = float(rng.uniform(0.002, 0.005))
        style["pleura_gaps"] = style["pleura_gaps"][: int(rng.integers(0, 2))]
        style["a_lines"] = int(rng.integers(1, 3))  # mild disease keeps some A-lines
    elif label == "pneumonia":
        consolidation = style["consolidation"]
        consolidation.update(half_width=float(rng.uniform(0.07, 0.13)), height=float(rng.uniform(0.05, 0.1)))
        for tree in style["bronchograms"]:  # keep the air bronchograms inside the small consolidation
            tree["u"] = float(consolidation["u"] + rng.uniform(-0.5, 0.5) * consolidation["half_width"])
            tree["d"] = float(rng.uniform(0.15, 0.4) * consolidation["height"])
            tree["length"] = float(rng.uniform(0.3, 0.5) * consolidation["height"])
        style["bronchograms"] = style["bronchograms"][:2]
        style["a_lines"] = int(rng.integers(2, 4))
    else:  # regular: faint A-lines and one isolated B-line (normal lungs may show up to two)
        style["a_lines"] = int(rng.integers(1, 3))
        style["b_lines"] = [{"u": float(rng.uniform(lo, hi)), "width": float(rng.uniform(0.006, 0.01)),
                             "strength": float(rng.uniform(0.18, 0.32))}]
    style["borderline"] = True
    return style
