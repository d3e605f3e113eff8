"""An ipywidgets explorer of class activation maps over videos and images: thin callbacks over
:mod:`covnb.cam`.

``CamExplorer(model, samples, class_names)`` shows, for one frame of one sample, the heatmap
overlay (Grad-CAM, Grad-CAM++ or CAM) and the per-frame class probabilities of the whole
sample, with a "jump to the most <class> frame" button per class: stop the video where it
matters. Probabilities are computed once per sample (batched); heatmaps are cached at conv
resolution per (sample, frame, layer, class, method), so opacity, colormap and threshold only
redraw the overlay. ``static_figure()`` returns a matplotlib Figure of the current view, for
executed HTML reports (where widgets are frozen), and ``save_png()`` writes it to ``out_dir``.
What is computed and cached (frames, probabilities, heatmaps) lives in :mod:`covnb.explorer_state`;
this module is the controls, their callbacks and the rendering.
"""

from __future__ import annotations

import base64
import contextlib
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

import keras

from covnb import cam
from covnb.explorer_state import PREDICTED, ExplorerCache, png_bytes
from covnb.io_utils import slug

__all__ = ["CamExplorer", "METHOD_LABELS", "COLORMAPS"]

METHOD_LABELS = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "cam": "CAM"}
COLORMAPS = ("jet", "turbo", "inferno", "magma", "viridis", "plasma", "hot", "coolwarm")


def _slug(text) -> str:
    return slug(text, default="x", strip="_")


class CamExplorer(ExplorerCache):
    """Interactive CAM explorer for a covnb model: pick a sample, a frame, a method (Grad-CAM,
    Selvaraju et al. 2017; Grad-CAM++, Chattopadhay et al. 2018; CAM, Zhou et al. 2016), a layer
    and a class, and see the heatmap over the frame with the class probabilities.

    Parameters
    ----------
    model : keras.Model
        A flat Keras model (raw RGB 0..255 in, logits + softmax out), e.g. from :func:`covnb.models.load_model`.
    samples : dict of str to ndarray
        Name -> uint8 frames (T, H, W, 3) (an image is T=1); frames are resized to the model input
        for the model and shown at their own size.
    class_names : sequence of str
        One per model output.
    out_dir : path
        Where "save" writes the overlay PNGs.
    layers : sequence of str, optional
        Names for the layer menu (default: the conv layers, deepest last, at most ``max_layers``).
    max_layers : int
        Longest default layer menu.
    batch_size : int
        Frames per model call.
    display_width : int
        Width of the shown frame, in pixels.
    max_cached_heatmaps : int
        Heatmaps kept in memory (least recently used ones go first).
    calibration : dict, optional
        A saved model's sidecar ``calibration`` block; the probabilities shown are then calibrated.
    metadata : dict, optional
        The whole sidecar (its ``calibration`` block is used when ``calibration`` is None); with its
        ``trust`` block and ``trust_arrays`` (:func:`covnb.prediction_trust.load_trust_arrays`) the status line
        shows the file's calibrated probability and, as ``covnb predict``, the ``uncertain`` flag
        with its reason (:meth:`file_summary`).
    trust_arrays : dict, optional
        The model's saved trust arrays (fold heads, feature density).

    Examples
    --------
    >>> from covnb.models import load_model
    >>> from covnb.frames import read_frames, frame_settings_from_metadata
    >>> model, metadata = load_model("runs/pocus/model.keras")  # doctest: +SKIP
    >>> frames, _ = read_frames("clip.mp4", frame_settings_from_metadata(metadata))  # doctest: +SKIP
    >>> CamExplorer(model, {"clip": frames}, metadata["classes"], out_dir="cams",
    ...             calibration=metadata.get("calibration"))  # doctest: +SKIP
    """

    def __init__(self, model: keras.Model, samples: Mapping[str, np.ndarray], class_names: Sequence[str], *,
                 out_dir: str | Path = ".", layers: Sequence[str] | None = None, max_layers: int = 12,
                 batch_size: int = 16, display_width: int = 360, max_cached_heatmaps: int = 512,
                 calibration: dict | None = None, metadata: dict | None = None, trust_arrays: dict | None = None):
        import ipywidgets as widgets

        super().__init__(model, samples, class_names, batch_size=batch_size, max_cached_heatmaps=max_cached_heatmaps,
                         calibration=calibration, metadata=metadata, trust_arrays=trust_arrays)
        self.out_dir = Path(out_dir)
        self.layers = self._check_layers(layers, max_layers)
        self._quiet = False
        self._figure = None
        self._figure_sample = None
        self.last_overlay: np.ndarray | None = None
        self.last_saved: Path | None = None

        controls = self._build_controls(widgets, int(display_width))
        self.widget = widgets.VBox([widgets.HBox([controls, self.image]), self.status, self.plot_output])
        self.widget.add_class("covnb-cam-explorer")
        self._update_method_state()
        self.refresh()

    def _build_controls(self, widgets, display_width: int):
        """Create the controls, the image and the outputs, wire their callbacks; the control column."""
        first = next(iter(self.samples))
        n_frames = len(self.samples[first])
        self.sample_dropdown = widgets.Dropdown(options=list(self.samples), value=first, description="sample")
        self.frame_slider = widgets.IntSlider(value=0, min=0, max=max(n_frames - 1, 0), description="frame",
                                              continuous_update=False)
        self.play = widgets.Play(value=0, min=0, max=max(n_frames - 1, 0), interval=333, description="play")
        self._play_link = widgets.jslink((self.play, "value"), (self.frame_slider, "value"))
        self.class_dropdown = widgets.Dropdown(
            options=[("predicted", PREDICTED)] + [(name, i) for i, name in enumerate(self.class_names)],
            value=PREDICTED, description="class")
        self.method_dropdown = widgets.Dropdown(options=[(METHOD_LABELS[m], m) for m in self.methods],
                                                value=self.methods[0], description="method")
        self.layer_dropdown = widgets.Dropdown(options=self.layers, value=self.layers[-1], description="layer")
        self.opacity_slider = widgets.FloatSlider(value=0.4, min=0.0, max=1.0, step=0.05, description="opacity")
        self.colormap_dropdown = widgets.Dropdown(options=list(COLORMAPS), value="jet", description="colormap")
        self.threshold_slider = widgets.FloatSlider(value=0.0, min=0.0, max=0.95, step=0.05, description="threshold",
                                                    tooltip="zero heat below this value (POCOVID-Net: 0.4-0.65)")
        self.save_button = widgets.Button(description="Save PNG", icon="download")
        self.jump_buttons = [widgets.Button(description=f"Most {name}", tooltip=f"Go to the frame with the "
                                            f"highest {name} probability") for name in self.class_names]
        self.image = widgets.Image(format="png", layout=widgets.Layout(width=f"{display_width}px"))
        self.plot_output = widgets.Output()
        self.status = widgets.HTML()

        css = {
            "sample": self.sample_dropdown, "frame": self.frame_slider, "play": self.play,
            "class": self.class_dropdown, "method": self.method_dropdown, "layer": self.layer_dropdown,
            "opacity": self.opacity_slider, "colormap": self.colormap_dropdown,
            "threshold": self.threshold_slider, "save": self.save_button, "image": self.image,
            "plot": self.plot_output, "status": self.status,
        }
        for name, control in css.items():
            control.add_class(f"covnb-{name}")
        for index, button in enumerate(self.jump_buttons):
            button.add_class("covnb-jump")
            button.add_class(f"covnb-jump-{_slug(self.class_names[index])}")
            button.on_click(lambda _button, index=index: self.jump_to_class(index))
        self.save_button.on_click(lambda _button: self.save_png())

        self.sample_dropdown.observe(self._on_sample, names="value")
        self.frame_slider.observe(self._on_frame, names="value")
        for control in (self.class_dropdown, self.method_dropdown, self.layer_dropdown):
            control.observe(self._on_heatmap_control, names="value")
        for control in (self.opacity_slider, self.colormap_dropdown, self.threshold_slider):
            control.observe(self._on_overlay_control, names="value")

        controls = widgets.VBox([
            self.sample_dropdown, widgets.HBox([self.play, self.frame_slider]), self.class_dropdown,
            self.method_dropdown, self.layer_dropdown, self.opacity_slider, self.colormap_dropdown,
            self.threshold_slider, widgets.HBox(self.jump_buttons, layout=widgets.Layout(flex_flow="row wrap")),
            self.save_button,
        ])
        return controls


    # ------------------------------------------------------------------ state and computations

    def _check_layers(self, layers, max_layers) -> list[str]:
        if layers is None:
            names = cam.conv_layer_names(self.model)
            last = cam.last_conv_layer_name(self.model)
            if last not in names:
                names.append(last)
            return names[-int(max_layers):] if max_layers else names
        names = [cam.resolve_layer(self.model, name).name for name in layers]  # clear error on bad names
        if not names:
            raise ValueError("layers is empty: give at least one conv layer name.")
        return names

    @property
    def sample(self) -> str:
        return self.sample_dropdown.value

    @property
    def frame(self) -> int:
        return int(self.frame_slider.value)

    @property
    def method(self) -> str:
        return self.method_dropdown.value

    @property
    def layer(self) -> str:
        """The layer actually explained (CAM always uses the layer feeding its global pooling)."""
        return self.cam_layer if self.method == "cam" else self.layer_dropdown.value

    def probabilities(self, sample: str | None = None) -> np.ndarray:
        """(T, C) class probabilities of every frame of ``sample`` (default: the current one), cached."""
        return super().probabilities(self.sample if sample is None else sample)

    def file_summary(self, sample: str | None = None) -> dict:
        """The whole file as ``covnb predict`` reports it (default: the current sample); see
        :meth:`covnb.explorer_state.ExplorerCache.file_summary`."""
        return super().file_summary(self.sample if sample is None else sample)

    def target_class(self) -> int:
        """The explained class: the chosen one, or the predicted class of the current frame."""
        chosen = int(self.class_dropdown.value)
        return int(self.probabilities()[self.frame].argmax()) if chosen == PREDICTED else chosen

    def heatmap(self, sample: str | None = None, frame: int | None = None, *, layer: str | None = None,
                class_index: int | None = None, method: str | None = None) -> np.ndarray:
        """Heatmap (h, w) 0..1 at conv resolution; defaults to the current view. Cached."""
        return self.cached_heatmap(self.sample if sample is None else sample,
                                   self.frame if frame is None else int(frame),
                                   layer=layer or self.layer_dropdown.value,
                                   class_index=int(self.class_dropdown.value) if class_index is None else class_index,
                                   method=self.method if method is None else method)

    def overlay_image(self) -> np.ndarray:
        """uint8 RGB overlay of the current view (from the heatmap cache when possible)."""
        threshold = float(self.threshold_slider.value) or None
        return cam.overlay(self.samples[self.sample][self.frame], self.heatmap(), alpha=float(self.opacity_slider.value),
                           colormap=self.colormap_dropdown.value, threshold=threshold)

    def sector(self, sample: str | None = None) -> np.ndarray:
        """Ultrasound sector mask of ``sample`` (default: the current one)."""
        return super().sector(self.sample if sample is None else sample)

    def heat_inside_sector(self) -> float:
        """Fraction of the current heatmap inside the ultrasound sector (cached)."""
        key = (self.sample, self.frame, self.layer, self.target_class(), self.method)
        return self.cached_heat_inside(key, self.heatmap(), self.sample)

    # ------------------------------------------------------------------ rendering

    def refresh(self) -> None:
        """Redraw overlay, plot and status for the current controls."""
        self._render_overlay()
        self._render_plot()

    def _render_overlay(self) -> None:
        start = time.perf_counter()
        self.last_overlay = self.overlay_image()
        self.image.value = png_bytes(self.last_overlay)
        self.stats["overlay_renders"] += 1
        self._render_status()
        self.timings["overlay"] = (time.perf_counter() - start) * 1000.0

    def _render_status(self, note: str = "") -> None:
        probs = self.probabilities()[self.frame]
        predicted = int(probs.argmax())
        target = self.target_class()
        inside = self.heat_inside_sector()
        text = (f"<b>{self.sample}</b> frame {self.frame + 1}/{len(self.samples[self.sample])} &middot; "
                f"predicted <b>{self.class_names[predicted]}</b> ({probs[predicted]:.2f}) &middot; "
                f"explaining <b>{self.class_names[target]}</b> with {METHOD_LABELS[self.method]} on "
                f"<code>{self.layer}</code> &middot; heat inside sector {inside:.0%}")
        summary = self.file_summary()
        text += (f"<br>file: <b>{summary['predicted']}</b> {summary['probability']:.2f} ({summary['label']} "
                 "probabilities)")
        if summary["uncertain"] is not None:
            text += (f" &middot; <b class='covnb-uncertain'>uncertain</b>: {summary['reason']}" if summary["uncertain"]
                     else " &middot; <span class='covnb-certain'>not flagged uncertain</span>")
        if note:
            text += f"<br>{note}"
        self.status.value = text

    def _draw_probability_axes(self, timeline_axes, bar_axes) -> dict:
        probs = self.probabilities()
        frames = np.arange(len(probs))
        lines = {}
        for index, name in enumerate(self.class_names):
            (lines[name],) = timeline_axes.plot(frames, probs[:, index], marker="o" if len(frames) < 40 else None,
                                                markersize=3, label=name, color=f"C{index}")
        marker = timeline_axes.axvline(self.frame, color="black", linestyle="--", linewidth=1)
        timeline_axes.set_xlim(-0.5, max(len(frames) - 0.5, 0.5))
        timeline_axes.set_ylim(0, 1.02)
        timeline_axes.set_xlabel("frame")
        timeline_axes.set_ylabel("probability")
        timeline_axes.set_title(f"{self.sample}: class probability per frame", fontsize=10)
        timeline_axes.legend(fontsize=8, loc="upper right")
        bars = bar_axes.bar(range(len(self.class_names)), probs[self.frame],
                            color=[f"C{i}" for i in range(len(self.class_names))])
        bar_axes.set_xticks(range(len(self.class_names)), self.class_names, rotation=30, fontsize=8)
        bar_axes.set_ylim(0, 1.02)
        bar_axes.set_title(f"frame {self.frame}", fontsize=10)
        return {"marker": marker, "bars": bars, "bar_axes": bar_axes}

    def _render_plot(self) -> None:
        """Probability timeline + bars of the current frame, as PNG in the Output widget.

        The static part (lines, axes, layout) is drawn once per sample; a new frame only
        restores that background and redraws the marker and the bars (blitting), a few ms.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        if self._figure is None or self._figure_sample != self.sample:
            figure = Figure(figsize=(8.0, 2.6), dpi=80, layout="constrained")
            canvas = FigureCanvasAgg(figure)
            timeline_axes, bar_axes = figure.subplots(1, 2, width_ratios=[3, 1])
            parts = self._draw_probability_axes(timeline_axes, bar_axes)
            bar_axes.set_title("current frame", fontsize=10)
            parts["animated"] = [parts["marker"], *parts["bars"]]
            for artist in parts["animated"]:
                artist.set_animated(True)
            canvas.draw()
            figure.set_layout_engine("none")  # keep the positions; no layout pass per frame
            parts["background"] = canvas.copy_from_bbox(figure.bbox)
            self._figure, self._figure_sample, self._figure_parts = figure, self.sample, parts
        start = time.perf_counter()
        parts, canvas = self._figure_parts, self._figure.canvas
        parts["marker"].set_xdata([self.frame, self.frame])
        for bar, height in zip(parts["bars"], self.probabilities()[self.frame]):
            bar.set_height(float(height))
        canvas.restore_region(parts["background"])
        for artist in parts["animated"]:
            self._figure.draw_artist(artist)
        rgb = np.asarray(canvas.buffer_rgba())[..., :3]
        self.plot_output.outputs = ({
            "output_type": "display_data",
            "data": {"image/png": base64.b64encode(png_bytes(rgb)).decode("ascii"),
                     "text/plain": f"<probabilities of {self.sample}, frame {self.frame}>"},
            "metadata": {},
        },)
        self.stats["plot_renders"] += 1
        self.timings["plot"] = (time.perf_counter() - start) * 1000.0

    def static_figure(self):
        """Matplotlib Figure of the current view: frame, overlay, probability timeline and bars."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(9.0, 6.8), layout="constrained")
        FigureCanvasAgg(figure)
        grid = figure.add_gridspec(2, 4, height_ratios=[3, 1.4])
        frame_axes = figure.add_subplot(grid[0, 0:2])
        overlay_axes = figure.add_subplot(grid[0, 2:4])
        frame_axes.imshow(self.samples[self.sample][self.frame])
        frame_axes.set_title(f"{self.sample}, frame {self.frame}", fontsize=10)
        overlay_axes.imshow(self.overlay_image())
        target = self.target_class()
        overlay_axes.set_title(f"{METHOD_LABELS[self.method]} for {self.class_names[target]} ({self.layer})", fontsize=10)
        for axes in (frame_axes, overlay_axes):
            axes.axis("off")
        self._draw_probability_axes(figure.add_subplot(grid[1, 0:3]), figure.add_subplot(grid[1, 3]))
        probs = self.probabilities()[self.frame]
        figure.suptitle(f"predicted {self.class_names[int(probs.argmax())]} ({probs.max():.2f}); "
                        f"opacity {self.opacity_slider.value:.2f}, colormap {self.colormap_dropdown.value}, "
                        f"threshold {self.threshold_slider.value:.2f}", fontsize=10)
        return figure

    def save_png(self, path: str | Path | None = None, dpi: int = 100) -> Path:
        """Write the current view (``static_figure``) as PNG; default name inside ``out_dir``."""
        if path is None:
            name = "_".join(_slug(part) for part in (self.sample, f"frame{self.frame:03d}", self.method, self.layer,
                                                     self.class_names[self.target_class()]))
            path = self.out_dir / f"{name}.png"
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.static_figure().savefig(path, dpi=dpi)
        self.last_saved = path
        self._render_status(note=f"saved <code>{path}</code>")
        return path

    def jump_to_class(self, class_index: int) -> int:
        """Move to the frame with the highest probability of ``class_index``; return that frame."""
        frame = int(self.probabilities()[:, int(class_index)].argmax())
        self.frame_slider.value = frame
        return frame

    # ------------------------------------------------------------------ callbacks (thin)

    @contextlib.contextmanager
    def _quietly(self):
        previous, self._quiet = self._quiet, True
        try:
            yield
        finally:
            self._quiet = previous

    def _on_sample(self, change) -> None:
        n_frames = len(self.samples[change["new"]])
        with self._quietly():
            self.frame_slider.value = 0
            self.play.value = 0
            self.frame_slider.max = n_frames - 1
            self.play.max = n_frames - 1
        self.refresh()

    def _on_frame(self, change) -> None:
        if not self._quiet:
            self.refresh()

    def _update_method_state(self) -> None:
        self.layer_dropdown.disabled = self.method == "cam"

    def _on_heatmap_control(self, change) -> None:
        self._update_method_state()
        if not self._quiet:
            self._render_overlay()

    def _on_overlay_control(self, change) -> None:
        if not self._quiet:
            self._render_overlay()

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)
