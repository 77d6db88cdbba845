"""Fast CPU inference for image towers through ONNX Runtime.

PyTorch's CPU kernels for depthwise convolutions are slow: EfficientNet-Lite0 runs at
~12 images/s (NCHW) to ~25 images/s (channels-last) on the 2-core target machine, while
the same graph in ONNX Runtime runs at ~60-75 images/s (`bench/index_throughput.py`
measures it). So the tower is exported once (cached on disk, keyed by a hash of its
weights) and run by ONNX Runtime; PyTorch stays the reference and the fallback when
onnxruntime is not installed or the export fails.

Importing this module does not import torch (only exporting does): the query path of the
CLI runs compiled encoders (models/onnx_backend.py) without it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np


def cache_dir() -> Path:
    root = os.environ.get("IMAGETEXT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "imagetext"
    )
    return Path(root)


def cpu_session(path: str | os.PathLike, threads: int, spin: bool = True):
    """An ONNX Runtime CPU session on `threads` intra-op threads (0: one per physical core).

    `spin=False`: its threads do not spin-wait for more work after a run. ORT's default lets
    them spin, which keeps the cores busy after the run returns. That is ~10% faster for
    back-to-back batches (EfficientNet-Lite0 at batch 32: 13.3-13.8 against 14.8-16.0 ms per
    image, measured on the 2-core machine), but PyTorch code running right after a run
    competes with the spinning threads: the caption decoder after the tower took 55-68 ms
    per image instead of 28-31 (greedy, one image at a time, measured).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def state_dict_hash(module) -> str:
    h = hashlib.sha1()
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class OnnxTower:
    """Runs `module(x) -> tuple of tensors` through ONNX Runtime with a dynamic batch axis."""

    def __init__(self, module, example, output_names: list[str],
                 tag: str, threads: int | None = None, spin: bool = True):
        import onnxruntime  # noqa: F401  (missing: fail before the export)
        import torch

        self.output_names = output_names
        path = cache_dir() / "onnx" / f"{tag}-{state_dict_hash(module)}.onnx"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            # export to a temporary file and rename: a crash never leaves a broken model
            fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
            os.close(fd)
            os.chmod(tmp, 0o644)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    torch.onnx.export(
                        module.eval(), (example,), tmp, dynamo=False, opset_version=17,
                        input_names=["pixels"], output_names=output_names,
                        dynamic_axes={"pixels": {0: "batch"}, **{n: {0: "batch"} for n in output_names}},
                    )
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        self.session = cpu_session(path, threads or torch.get_num_threads(), spin)
        self.path = path

    def __call__(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.session.run(self.output_names, {"pixels": np.ascontiguousarray(pixels, np.float32)})
        return dict(zip(self.output_names, outs))


def onnx_unavailable_reason() -> str | None:
    """Why ONNX Runtime cannot run the towers here, or None when it can."""
    if os.environ.get("IMAGETEXT_NO_ONNX"):
        return "IMAGETEXT_NO_ONNX is set"
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        return f"onnxruntime cannot be imported ({exc}); reinstall imagetext's dependencies"
    return None


def onnx_available() -> bool:
    return onnx_unavailable_reason() is None


def tower_runtime() -> dict[str, str]:
    """What runs a PyTorch-defined encoder whose image tower goes through `tower_runner`: its
    image tower in ONNX Runtime when that is available, its text tower in PyTorch."""
    return {"image": "onnxruntime" if onnx_available() else "pytorch", "text": "pytorch"}


def tower_runner(module, resolution: int, output_names: list[str], tag: str,
                 spin: bool = True):
    """pixels (B, 3, H, W) -> {output name: float32 array} for `module(x) -> tuple of tensors`.

    ONNX Runtime when it is installed and the export works; otherwise the same module in
    PyTorch with channels-last memory (~2x NCHW for depthwise convolutions), same vectors.
    `spin=False` when PyTorch work follows each run (see `cpu_session`).
    """
    import torch

    module = module.eval()
    if onnx_available():
        try:
            return OnnxTower(module, torch.zeros(1, 3, resolution, resolution), output_names, tag=tag,
                             spin=spin)
        except Exception as exc:  # noqa: BLE001  (any export/runtime failure: fall back)
            warnings.warn(f"ONNX Runtime unavailable for {tag} ({exc}); using PyTorch")
    module = module.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def run(pixels: np.ndarray) -> dict[str, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
        outs = module(x.contiguous(memory_format=torch.channels_last))
        return {n: t.numpy() for n, t in zip(output_names, outs)}

    return run
