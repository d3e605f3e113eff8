"""Drawing the synthetic lung-ultrasound phantom: patient styles, clips and scanner screens.

What is drawn and why is described in :mod:`covnb.phantom`, which writes the data sets. Every
function takes a NumPy generator and draws from it in a fixed order: the same generator state
always gives the same pixels. THE DATA IT MAKES ARE SYNTHETIC: NOT REAL PATIENTS, NOT FOR ANY
CLINICAL USE.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import cv2
import numpy as np

__all__ = ["PHANTOM_CLASSES", "PHANTOM_SOURCES", "SCREEN_DESIGNS", "sample_patient_style", "make_clip",
           "assign_sources", "render_screen"]

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
    elif label == "pneumonia":
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
    style.update(_scanner_settings(rng))
    return style


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


# --------------------------------------------------------------------------- geometry


@functools.lru_cache(maxsize=16)
def _scan_conversion_maps(size: int, half_angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Maps for cv2.remap from a (size x size) polar image (rows: depth, cols: angle) to a
    size x size convex sector whose apex lies above the image."""
    half = np.deg2rad(half_angle_deg)
    depth = 0.94 * size
    r_max = 0.49 * size / np.sin(half)
    r_min = r_max - depth
    apex_y = 0.03 * size - r_min
    cx = (size - 1) / 2.0
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    dx, dy = x - cx, y - apex_y
    radius = np.hypot(dx, dy)
    theta = np.arctan2(dx, dy)
    row = (radius - r_min) / depth * (size - 1)
    col = (theta + half) / (2 * half) * (size - 1)
    outside = (row < -0.5) | (row > size - 0.5) | (col < -0.5) | (col > size - 0.5)
    row[outside] = -10
    col[outside] = -10
    return col.astype(np.float32), row.astype(np.float32)


def _smooth_noise_1d(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """Unit-variance smooth noise of length n (Gaussian-filtered white noise)."""
    pad = int(4 * sigma) + 1
    raw = rng.standard_normal(n + 2 * pad).astype(np.float32)[None, :]
    smooth = cv2.GaussianBlur(raw, (0, 0), sigmaX=max(sigma, 0.3), borderType=cv2.BORDER_REFLECT)[0]
    smooth = smooth[pad : pad + n]
    return (smooth - smooth.mean()) / (smooth.std() + 1e-6)


def _complex_field(rng: np.random.Generator, shape, sigma_lateral: float, sigma_axial: float):
    field = rng.standard_normal((2, *shape), dtype=np.float32)
    return [cv2.GaussianBlur(f, (0, 0), sigmaX=sigma_lateral, sigmaY=sigma_axial) for f in field]


# --------------------------------------------------------------------------- drawing


def make_clip(
    label: str,
    rng: np.random.Generator,
    *,
    n_frames: int = 20,
    size: int = 160,
    patient_style: dict | None = None,
) -> np.ndarray:
    """Render one synthetic convex-probe clip, uint8 array (n_frames, size, size).

    ``patient_style`` (from :func:`sample_patient_style`) fixes the patient; when None one
    is drawn from ``rng``. The same generator state always gives the same clip.
    """
    label = _canonical_label(label)
    if int(n_frames) < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if int(size) < 32:
        raise ValueError(f"size must be >= 32 pixels, got {size}")
    n_frames, size = int(n_frames), int(size)
    style = sample_patient_style(label, rng) if patient_style is None else patient_style
    if _canonical_label(style.get("label", label)) != label:
        raise ValueError(f"patient_style was drawn for {style['label']!r}, not {label!r}")
    # The draws from rng happen in a fixed order (clip layers, consolidation, speckle, then frame by
    # frame): the same generator state always gives the same clip.
    clip = _clip_layers(style, rng, n_frames, size)
    _consolidation_layers(clip, style, rng)
    _speckle_layers(clip, style, rng)
    frames = np.empty((n_frames, size, size), np.uint8)
    for t in range(n_frames):
        frames[t] = _render_frame(clip, style, rng, float(clip.slide[t]))
    return frames


def _clip_layers(style: dict, rng: np.random.Generator, n_frames: int, size: int) -> SimpleNamespace:
    """The polar grid and what stays fixed during a clip: chest wall, pleural texture, ribs."""
    n = size  # polar grid: n depth samples x n lateral samples
    scale = size / 160.0
    d = np.linspace(0.0, 1.0, n, dtype=np.float32)[:, None]
    u = np.linspace(0.0, 1.0, n, dtype=np.float32)[None, :]
    px = 1.0 / (n - 1)  # one polar pixel in depth/lateral units

    # Per-clip jitter so videos of one patient look alike but not identical.
    # (python floats throughout: numpy float64 scalars would promote the float32 images)
    pleura = float(style["pleura_depth"] + rng.uniform(-0.006, 0.006))
    gain = float(style["gain"] * rng.uniform(0.95, 1.05))
    phase = float(rng.uniform(0, 2 * np.pi))
    period = float(style["breath_period_frames"] * rng.uniform(0.9, 1.1))
    slide = style["slide_amplitude"] * np.sin(2 * np.pi * np.arange(n_frames) / period + phase)

    # Chest wall: depth profile with fascia lines, attenuation-compensated.
    tissue_profile = style["tissue_echo"] * (1 + 0.25 * _smooth_noise_1d(rng, n, 6 * scale))[:, None]
    for depth_frac in style["fascia_depths"]:
        fd = depth_frac * pleura
        tissue_profile = tissue_profile + 0.35 * np.exp(-0.5 * ((d - fd) / (1.2 * px)) ** 2)
    tissue_profile = tissue_profile * (1 + 0.15 * _smooth_noise_1d(rng, n, 10 * scale))[None, :]

    # Pleural line: lateral texture that slides; COVID: wavy, thick, broken.
    pleura_texture_long = 0.75 + 0.25 * np.tanh(_smooth_noise_1d(rng, 3 * n, 2.5 * scale))
    irregular = style["pleura_irregularity"]
    wave = irregular * _smooth_noise_1d(rng, 3 * n, 7 * scale) if irregular else np.zeros(3 * n, np.float32)
    thickness = (2.4 if irregular else 1.1) * px * max(scale, 0.8)
    gaps = np.ones(3 * n, np.float32)
    ul = np.linspace(-1.0, 2.0, 3 * n, dtype=np.float32)
    for centre, width in style["pleura_gaps"]:
        gaps *= 1 - 0.8 * np.exp(-0.5 * ((ul - centre - rng.uniform(-0.02, 0.02)) / width) ** 4)

    rib_shadow, rib_echo = _ribs(style, n, d, u, px, pleura)
    return SimpleNamespace(n=n, size=size, scale=scale, d=d, u=u, px=px, pleura=pleura, gain=gain, slide=slide,
                           tissue_profile=tissue_profile, pleura_texture_long=pleura_texture_long, wave=wave,
                           thickness=thickness, gaps=gaps, rib_shadow=rib_shadow, rib_echo=rib_echo)


def _ribs(style: dict, n: int, d, u, px: float, pleura: float) -> tuple[np.ndarray, np.ndarray]:
    """Ribs: a bright arc plus an acoustic shadow at one or both sides (shadow, echo)."""
    rib_shadow = np.ones((n, n), np.float32)
    rib_echo = np.zeros((n, n), np.float32)
    for side in style["ribs"]:
        centre = 0.04 if side == 0 else 0.96
        half_width = 0.11
        inside = np.clip(1 - ((u - centre) / half_width) ** 2, 0, None)
        rib_top = pleura - 0.035 - 0.03 * np.sqrt(inside)
        edge = _sigmoid((np.abs(u - centre) - half_width) / 0.01)
        below = _sigmoid((d - rib_top) / (1.5 * px))
        rib_shadow *= 1 - (1 - edge) * below * 0.9
        rib_echo += 1.2 * (1 - edge) * np.exp(-0.5 * ((d - rib_top) / (1.5 * px)) ** 2)
    return rib_shadow, rib_echo


def _consolidation_layers(clip: SimpleNamespace, style: dict, rng: np.random.Generator) -> None:
    """The fixed parts of a consolidation (shred line, bronchograms, punctiform spots), if any."""
    consolidation = clip.consolidation = style["consolidation"]
    if consolidation is None:
        return
    n, scale = clip.n, clip.scale
    clip.shred = _smooth_noise_1d(rng, 3 * n, 7.0 * scale)
    clip.shred_breaks = np.clip(0.6 + 0.8 * _smooth_noise_1d(rng, 3 * n, 3.0 * scale), 0, 1)
    clip.bronchogram_strength = rng.uniform(0.7, 1.0, size=len(style["bronchograms"]))
    clip.tissue_like = 0.065 * (1 + 0.15 * _smooth_noise_1d(rng, n, 3 * scale))[None, :]
    clip.top_px = clip.pleura + clip.thickness
    n_spots = int(rng.integers(3, 8))
    spot_x = rng.uniform(-0.7, 0.7, size=n_spots)
    clip.consolidation_spots = [  # punctiform bronchograms, relative to the consolidation centre
        (float(x * consolidation["half_width"]),
         float(rng.uniform(0.1, 0.75) * consolidation["height"] * (1 - x * x) ** 0.8))
        for x in spot_x
    ]


def _speckle_layers(clip: SimpleNamespace, style: dict, rng: np.random.Generator) -> None:
    """Speckle, time-gain compensation, dynamic range and the scan conversion of a clip.

    Speckle lives in the image plane (grain of a fixed physical size): the chest wall is
    nearly still, the lung artefacts shimmer and slide with the pleura.
    """
    scale, size = clip.scale, clip.size
    grain = float(style.get("speckle_grain", 1.0))
    clip.tissue_sigma = (0.9 * scale * grain, 0.5 * scale * grain)
    clip.lung_sigma = (1.4 * scale * grain, 0.6 * scale * grain)
    if "tgc" in style:  # time-gain compensation: a smooth gain curve over depth
        knots = np.linspace(0.0, 1.0, len(style["tgc"]))
        clip.rib_shadow = clip.rib_shadow * np.interp(clip.d[:, 0], knots, style["tgc"]).astype(np.float32)[:, None]
    clip.dynamic_range = float(style.get("dynamic_range", 1.5))
    clip.noise_floor = float(style.get("noise_floor", 0.0))
    clip.to_image_mask = None
    clip.tissue_base = _complex_field(rng, (size, size), *clip.tissue_sigma)
    clip.lung_base = _complex_field(rng, (size, size), *clip.lung_sigma)
    clip.keep_t, clip.keep_l = 0.97, 0.6
    clip.fresh_t_w, clip.fresh_l_w = np.sqrt(1 - clip.keep_t**2), np.sqrt(1 - clip.keep_l**2)
    clip.sector_width = 0.98 * size
    clip.map_x, clip.map_y = _scan_conversion_maps(size, round(style["half_angle_deg"], 3))


def _to_image(clip: SimpleNamespace, polar) -> np.ndarray:
    """Scan-convert a polar (depth x lateral) map into the sector image."""
    return cv2.remap(polar.astype(np.float32), clip.map_x, clip.map_y, cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _render_frame(clip: SimpleNamespace, style: dict, rng: np.random.Generator, s: float) -> np.ndarray:
    """One uint8 frame of the clip at pleural slide ``s``."""
    n, d, u, px, thickness = clip.n, clip.d, clip.u, clip.px, clip.thickness
    offset = int(round(s * (n - 1)))
    idx = np.clip(np.arange(n) + n - offset, 0, 3 * n - 1)  # lateral samples, slid
    pleura_u = (clip.pleura + clip.wave[idx])[None, :]
    shimmer = np.clip(1 + 0.12 * rng.standard_normal(n).astype(np.float32), 0.6, 1.4)
    pleura_tex = (clip.pleura_texture_long[idx] * shimmer * clip.gaps[idx])[None, :]

    below_pleura = _sigmoid((d - pleura_u - thickness) / (1.2 * px))
    above = 1 - below_pleura
    layers = SimpleNamespace(specular=1.45 * pleura_tex * np.exp(-0.5 * ((d - pleura_u) / thickness) ** 2),
                             tissue=clip.tissue_profile * above + clip.rib_echo * above, cons_mask=None)
    a_line_weight = 1.0
    consolidation = clip.consolidation
    if consolidation is not None:
        layers.cu = consolidation["u"] + 0.6 * s
        layers.rel = np.clip(1 - ((u - layers.cu) / consolidation["half_width"]) ** 2, 0, None)
        layers.top = pleura_u + thickness
        profile = layers.rel**0.6 * (1 + 0.08 * clip.shred[idx][None, :])
        layers.bottom = layers.top + consolidation["height"] * profile
        layers.cons_mask = (_sigmoid((d - layers.top) / px) * _sigmoid((layers.bottom - d) / (1.5 * px))
                            * (layers.rel > 0)).astype(np.float32)
        a_line_weight = 1 - np.clip(layers.rel * 3, 0, 1)  # no reverberation under the consolidated lung

    layers.lung = _lung_artefacts(clip, style, rng, s, pleura_tex, a_line_weight)
    if layers.cons_mask is not None:
        _add_consolidation(clip, style, rng, layers, idx)
    layers.lung = layers.lung * below_pleura
    return _speckled_image(clip, rng, s, layers)


def _lung_artefacts(clip: SimpleNamespace, style: dict, rng: np.random.Generator, s: float, pleura_tex,
                    a_line_weight) -> np.ndarray:
    """Lung echo below the pleura: A-lines (reverberations of the pleura) and B-lines (comet tails)."""
    d, u = clip.d, clip.u
    lung = style["lung_echo"] * (1 - 0.35 * d) * np.ones_like(u)
    if style["a_lines"]:
        a_strength = 0.8 if clip.consolidation is None else 0.6
        for k in range(2, 2 + style["a_lines"]):
            depth_k = k * clip.pleura
            if depth_k > 0.98:
                break
            amp = float(a_strength * (0.72 ** (k - 2)) * (1 + 0.1 * rng.standard_normal()))
            lung = lung + amp * a_line_weight * pleura_tex * np.exp(-0.5 * ((d - depth_k) / (1.4 * clip.px * clip.scale)) ** 2)
    for line in style["b_lines"]:
        centre = float(line["u"] + s + rng.normal(0, 0.002))
        flicker = float(np.clip(1 + 0.12 * rng.standard_normal(), 0.7, 1.2))
        b_profile = np.exp(-0.5 * ((u - centre) / line["width"]) ** 2)
        along = 1 + 0.15 * np.sin(d * 40 + float(rng.uniform(0, 2 * np.pi)))
        lung = lung + line["strength"] * flicker * b_profile * along * (1 - 0.15 * d)
    return lung


def _add_consolidation(clip: SimpleNamespace, style: dict, rng: np.random.Generator, layers: SimpleNamespace,
                       idx) -> None:
    """Draw a consolidation into the frame's layers: bright lower border, air bronchograms, tissue-like echo."""
    n, d, px, scale = clip.n, clip.d, clip.px, clip.scale
    consolidation, cons_mask, cu = clip.consolidation, layers.cons_mask, layers.cu
    border = 0.8 * clip.shred_breaks[idx][None, :] * np.clip((layers.rel - 0.2) / 0.4, 0, 1)
    layers.specular = layers.specular + border * np.exp(-0.5 * ((d - layers.bottom - 1.5 * px) / (2.0 * px * scale)) ** 2)
    bronchi = np.zeros((n, n), np.float32)
    for tree, strength in zip(style["bronchograms"], clip.bronchogram_strength):
        _draw_bronchogram(bronchi, tree, cu - consolidation["u"], clip.pleura + clip.thickness, n, strength, rng)
    for spot_u, spot_d in clip.consolidation_spots:
        centre_px = (int(round((spot_u + cu) * (n - 1) * 4)), int(round((clip.top_px + spot_d) * (n - 1) * 4)))
        cv2.circle(bronchi, centre_px, 4 * max(1, int(round(n / 110))), float(rng.uniform(0.5, 1.0)),
                   thickness=-1, lineType=cv2.LINE_AA, shift=2)
    bronchi = cv2.GaussianBlur(bronchi, (0, 0), 0.6 * scale) * cons_mask
    layers.specular = layers.specular + 1.6 * bronchi
    layers.tissue = layers.tissue + clip.tissue_like * cons_mask
    layers.lung = layers.lung * (1 - cons_mask)


def _speckled_image(clip: SimpleNamespace, rng: np.random.Generator, s: float, layers: SimpleNamespace) -> np.ndarray:
    """Scan-convert the frame's layers, multiply by speckle and log-compress to uint8."""
    size, rib_shadow = clip.size, clip.rib_shadow
    raw = rng.standard_normal((2, size, size), dtype=np.float32)
    fresh_l = [cv2.GaussianBlur(f, (0, 0), sigmaX=clip.lung_sigma[0], sigmaY=clip.lung_sigma[1]) for f in raw]
    raw = np.roll(raw, (size // 2, size // 3), axis=(1, 2))  # other noise samples for the wall
    fresh_t = [cv2.GaussianBlur(f, (0, 0), sigmaX=clip.tissue_sigma[0], sigmaY=clip.tissue_sigma[1]) for f in raw]
    shift_px = int(round(s * clip.sector_width))
    lung_now = [np.roll(f, shift_px, axis=1) for f in clip.lung_base]
    env_t = np.hypot(clip.keep_t * clip.tissue_base[0] + clip.fresh_t_w * fresh_t[0],
                     clip.keep_t * clip.tissue_base[1] + clip.fresh_t_w * fresh_t[1])
    env_l = np.hypot(clip.keep_l * lung_now[0] + clip.fresh_l_w * fresh_l[0],
                     clip.keep_l * lung_now[1] + clip.fresh_l_w * fresh_l[1])
    # speckle contrast below fully developed (as after the scanner's smoothing)
    env_t = 0.35 + 0.65 * env_t / (env_t.mean() + 1e-6)
    env_l = 0.35 + 0.65 * env_l / (env_l.mean() + 1e-6)

    echo = (_to_image(clip, layers.tissue * rib_shadow) * env_t + _to_image(clip, layers.lung * rib_shadow) * env_l
            + _to_image(clip, layers.specular * rib_shadow) * (0.75 + 0.25 * env_t))
    if clip.noise_floor:
        if clip.to_image_mask is None:
            clip.to_image_mask = _to_image(clip, np.ones((clip.n, clip.n), np.float32))
        echo = echo + clip.noise_floor * clip.to_image_mask * env_l
    image = 255.0 * (1 - np.exp(-clip.dynamic_range * clip.gain * np.clip(echo, 0, None)))
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def _sigmoid(x):
    return 0.5 * (1 + np.tanh(0.5 * x))


def _draw_bronchogram(canvas, tree, shift_u, top, n, strength, rng):
    """Draw one branching air bronchogram as a trail of short bright spots (polar pixels)."""
    scale_px = n - 1
    x0 = (tree["u"] + shift_u) * scale_px
    y0 = (top + tree["d"]) * scale_px
    dx, dy = np.sin(tree["angle"]), np.cos(tree["angle"])
    length = tree["length"] * scale_px
    segments = [(x0, y0, x0 + dx * length, y0 + dy * length)]
    for frac, turn in zip(tree["branches"], tree["branch_angles"]):
        bx, by = x0 + dx * length * frac, y0 + dy * length * frac
        angle = tree["angle"] + turn
        blen = length * 0.5
        segments.append((bx, by, bx + np.sin(angle) * blen, by + np.cos(angle) * blen))
    spacing = max(4.0, n / 32)
    thickness = max(1, int(round(n / 110)))
    for x1, y1, x2, y2 in segments:
        seg_len = np.hypot(x2 - x1, y2 - y1)
        steps = max(int(seg_len / spacing), 1)
        ux, uy = (x2 - x1) / seg_len, (y2 - y1) / seg_len
        for k in range(steps):
            if rng.random() < 0.25:  # some spots drop out from frame to frame
                continue
            cx, cy = x1 + (x2 - x1) * k / steps, y1 + (y2 - y1) * k / steps
            half = 0.3 * spacing
            p1 = (int(round((cx - ux * half) * 4)), int(round((cy - uy * half) * 4)))
            p2 = (int(round((cx + ux * half) * 4)), int(round((cy + uy * half) * 4)))
            cv2.line(canvas, p1, p2, float(strength * rng.uniform(0.7, 1.0)), thickness=thickness,
                     lineType=cv2.LINE_AA, shift=2)


# --------------------------------------------------------------------------- sources and screens

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
