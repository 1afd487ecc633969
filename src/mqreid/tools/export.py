"""Export a checkpoint's embedding network to ONNX.

    mqreid-export outputs/.../checkpoints/best.pt --onnx reid.onnx [--opset 18]

The graph takes ``images``: float32 [B, 3, H, W], already resized to the checkpoint's input size and
normalised with the checkpoint's mean and standard deviation (``input.mean``/``input.std``: ImageNet's by
default, 0.5/0.5 in the ViT presets; printed on export; what :attr:`mqreid.ReIDModel.transform` gives),
with a dynamic batch dimension B, and returns ``features``: float32 [B, D], L2-normalised. The file is
written through a temporary file renamed into place. When onnxruntime is installed the exported graph is run
on a random batch and its largest absolute difference to PyTorch is printed.

The default exporter is torch's ``torch.export``-based one (``dynamo``, needs ``onnxscript``); ``--exporter
torchscript`` selects the older TorchScript-based exporter, which needs nothing beyond torch. Both run offline.
Install the requirements with ``pip install 'mqreid[export]'``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from mqreid.utils.atomic import atomic_path
from mqreid.inference import ReIDModel

__all__ = ["EXPORTERS", "export_onnx", "onnx_max_abs_diff", "main"]

EXPORTERS = ("dynamo", "torchscript")
INPUT_NAME, OUTPUT_NAME = "images", "features"
DEFAULT_OPSET = 18


def export_onnx(model: ReIDModel, path: str | Path, *, opset: int = DEFAULT_OPSET, exporter: str = "dynamo") -> Path:
    """Write ``model.network`` as an ONNX graph ``images`` [B, 3, H, W] -> ``features`` [B, D] to ``path``.

    Args:
        model: the loaded checkpoint (its network is traced in eval mode on its device).
        path: the ``.onnx`` file to write (replaced atomically; its folder is created).
        opset: ONNX opset version.
        exporter: ``"dynamo"`` (torch.export-based, needs onnxscript) or ``"torchscript"``.

    Returns:
        ``path`` as a ``Path``.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter={exporter!r} is unknown; valid choices: {', '.join(EXPORTERS)}")
    if not isinstance(opset, int) or opset < 7:
        raise ValueError(f"opset must be an int >= 7, got {opset!r}")
    if exporter == "dynamo":
        try:
            import onnxscript  # noqa: F401  (torch's exporter imports it; fail here with a useful message)
        except ImportError as err:
            raise ImportError("the dynamo ONNX exporter needs onnxscript: pip install 'mqreid[export]', or use "
                              "--exporter torchscript") from err
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    network = model.network.eval()
    # batch 2: a batch of 1 would let the exporter treat the batch size as a constant
    example = torch.zeros(2, 3, *model.input_size, device=model.device)
    with atomic_path(path) as tmp:
        if exporter == "dynamo":
            torch.onnx.export(network, (example,), str(tmp), dynamo=True, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], opset_version=opset, external_data=False, verbose=False,
                              dynamic_shapes=({0: torch.export.Dim("batch")},))
        else:
            with warnings.catch_warnings():  # torch marks this exporter as deprecated
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(network, (example,), str(tmp), dynamo=False, input_names=[INPUT_NAME],
                                  output_names=[OUTPUT_NAME], opset_version=opset,
                                  dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    return path


def onnx_max_abs_diff(path: str | Path, model: ReIDModel, *, batch_size: int = 3, seed: int = 0) -> float:
    """Largest absolute difference between the ONNX graph at ``path`` (run by onnxruntime on the CPU) and
    :meth:`ReIDModel.embed_normalized` on a random batch [batch_size, 3, H, W] drawn with ``seed``."""
    import onnxruntime as ort

    images = torch.randn(batch_size, 3, *model.input_size, generator=torch.Generator().manual_seed(seed))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_out = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]
    torch_out = model.embed_normalized(images).numpy()
    if onnx_out.shape != torch_out.shape:
        raise ValueError(f"{path}: the ONNX output has shape {onnx_out.shape}, PyTorch's {torch_out.shape}")
    return float(np.abs(onnx_out - torch_out).max())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mqreid-export", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a .pt written by train.py (best.pt, last.pt) or a run directory")
    parser.add_argument("--onnx", required=True, metavar="OUT", help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--exporter", choices=EXPORTERS, default="dynamo",
                        help="torch's exporter: dynamo (default, needs onnxscript) or torchscript")
    parser.add_argument("--device", default="cpu", help="device the network is traced on (default cpu)")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest accepted difference to PyTorch on the check batch (default 1e-4)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model = ReIDModel.from_checkpoint(args.checkpoint, device=args.device)
        out = export_onnx(model, args.onnx, opset=args.opset, exporter=args.exporter)
    except (FileNotFoundError, ValueError, ImportError, RuntimeError) as err:
        print(f"mqreid-export: error: {err}", file=sys.stderr)
        return 2
    height, width = model.input_size
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, opset {args.opset}, {args.exporter} exporter): "
          f"input '{INPUT_NAME}' float32 [B, 3, {height}, {width}] normalised (mean "
          f"{list(model.normalization['mean'])}, std {list(model.normalization['std'])}), "
          f"output '{OUTPUT_NAME}' float32 [B, {model.embedding_dim}]")
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print("onnxruntime is not installed: the exported graph was not checked (pip install 'mqreid[export]')")
        return 0
    batch = 3
    diff = onnx_max_abs_diff(out, model, batch_size=batch)
    print(f"max abs difference to PyTorch on a random batch of {batch}: {diff:.3g}")
    if not diff <= args.tolerance:
        print(f"mqreid-export: error: the difference exceeds --tolerance {args.tolerance:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
