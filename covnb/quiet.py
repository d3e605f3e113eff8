"""Quiet start-up: TensorFlow's and the Jupyter kernel's routine messages stay out of covnb's output.

Every TensorFlow process prints a handful of lines at start-up (oneDNN, "Could not find cuda
drivers", ``E0000 ... cuInit ... UNKNOWN ERROR (303)`` on a machine without a GPU, CPU
instruction hints). TensorFlow 2.21 writes part of them through absl's C++ logging before it
reads ``TF_CPP_MIN_LOG_LEVEL``. Measured (TF 2.21, 2 CPUs, no GPU): ``TF_CPP_MIN_LOG_LEVEL=3``
removes the CPU-instruction lines and the cuInit error; the import still prints the absl
warning, oneDNN and "Could not find cuda drivers" (twice each). :func:`install` sets the
variable and hooks the first ``import tensorflow`` (from wherever: ``import keras`` too) so it
runs with file descriptor 2 pointed at a temporary file: known start-up lines are dropped,
any other line is written to stderr as it came. The kernels of ``covnb report`` call it before
the first cell (an ``exec_lines`` option) and log only errors, so the notebooks' HTML and the
terminal stay clean too. ``covnb --verbose`` or ``COVNB_VERBOSE=1`` keeps everything.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile

VERBOSE_ENV = "COVNB_VERBOSE"
# Start-up lines of TensorFlow / XLA / absl that say nothing about the user's run.
NOISE = re.compile(
    r"oneDNN custom operations are on|TF_ENABLE_ONEDNN_OPTS|Could not find cuda drivers|cuInit|cuda_executor|"
    r"cuda_diagnostics|This TensorFlow binary is optimized|To enable the following instructions|rebuild TensorFlow|"
    r"All log messages before absl::InitializeLog|Unable to register cu(DNN|FFT|BLAS) factory|"
    r"computation placer already registered|TF-TRT Warning|GPU will not be used|kernel driver does not appear|"
    r"retrieving CUDA diagnostic|hostname: |NUMA node|cuda_dnn|xla_bridge")


def verbose() -> bool:
    """True when the user asked for everything (``COVNB_VERBOSE=1`` or ``covnb --verbose``)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def set_verbose(on: bool) -> None:
    """Record the choice in the environment, so kernels started later inherit it."""
    if on:
        os.environ[VERBOSE_ENV] = "1"
    else:
        os.environ.pop(VERBOSE_ENV, None)


def quiet_environment(env: dict | None = None) -> dict:
    """Set (in ``env``, default ``os.environ``) what keeps TensorFlow's C++ logs quiet, unless verbose."""
    env = os.environ if env is None else env
    if not verbose():
        env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


def is_noise(line: str) -> bool:
    """A TensorFlow start-up line covnb hides (see :data:`NOISE`)."""
    return bool(NOISE.search(line))


@contextlib.contextmanager
def filtered_stderr():
    """Point file descriptor 2 (where C++ code logs) at a temporary file; afterwards write to stderr every
    captured line that is not start-up noise."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode("utf-8", "replace").splitlines():
                if line.strip() and not is_noise(line):
                    print(line, file=sys.stderr)


class _QuietLoader(importlib.abc.Loader):
    """Runs the real loader of ``tensorflow`` with :func:`filtered_stderr` (its start-up lines come then)."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = self._loader
        with filtered_stderr():
            self._loader.exec_module(module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` once, as the normal path finder does, with :class:`_QuietLoader` around its loader."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def install() -> None:
    """Quiet TensorFlow in this process, wherever it is imported from first (``import keras`` included):
    sets the environment and hooks the first ``import tensorflow``. Does nothing when verbose."""
    quiet_environment()
    if verbose() or "tensorflow" in sys.modules:
        return
    if not any(isinstance(finder, _QuietTensorFlowFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowFinder())


def kernel_arguments() -> list[str]:
    """Extra command-line options for a Jupyter kernel that runs covnb's notebooks: quiet TensorFlow from
    the first cell on (:func:`install`), and log only errors (no "Kernel is running over TCP without
    encryption" warning: the kernel listens on this machine's loopback interface only)."""
    if verbose():
        return []
    return ["--IPKernelApp.log_level=ERROR", "--IPKernelApp.exec_lines=['import covnb.quiet; covnb.quiet.install()']"]
