"""Drawing the synthetic lung-ultrasound phantom's clips (convex-probe B-mode videos).

Patient styles live in :mod:`covnb.phantom_style`, sites and scanner screens in
:mod:`covnb.phantom_screen` (their public names are re-exported here). What is drawn and why is
described in :mod:`covnb.phantom`, which writes the data sets. Every function takes a NumPy
generator and draws from it in a fixed order: the same generator state always gives the same
pixels. THE DATA IT MAKES ARE SYNTHETIC: NOT REAL PATIENTS, NOT FOR ANY CLINICAL USE.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import cv2
import numpy as np

from covnb.phantom_screen import PHANTOM_SOURCES, SCREEN_DESIGNS, assign_sources, render_screen
from covnb.phantom_style import PHANTOM_CLASSES, _canonical_label, sample_patient_style

__all__ = ["PHANTOM_CLASSES", "PHANTOM_SOURCES", "SCREEN_DESIGNS", "sample_patient_style", "make_clip",
           "assign_sources", "render_screen"]


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
