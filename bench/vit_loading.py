"""Load a fabricated DINO-layout checkpoint into the full-size ViTs and compare with TransReID-SSL's resize.

    python bench/vit_loading.py [--seed 0]

For vit_small and vit_small_ics (12 blocks): random weights at 256x128 (16x8 patches) saved as
``{"teacher": {"backbone.<key>": ...}, "student": {}, "args": Namespace(...)}`` (the LUPerson weights' layout,
DINO's head key included), loaded with ``hw_ratio=2`` into a model at 256x128 (no resize) and at 384x128
(24x8 patches). Prints, per case: tensors loaded of the model's, the other tensors that are bit-equal to the
file's, the position embedding's token counts, and its largest difference to the reference resize restated in
the tests (tests/models/test_vit.py: bilinear from the old grid h = int(sqrt(n * hw_ratio)), w = h // hw_ratio).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))
from bench_eval import provenance  # noqa: E402
from models.test_vit import reference_resize  # noqa: E402

from mqreid.models.vit import PATCH_SIZE, build_vit, load_vit_weights  # noqa: E402


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    print("\n".join(provenance()))
    print("\n| arch | model input | tensors loaded | other tensors bit-equal | position tokens | max diff to the "
          "reference resize | seconds |\n|---|---|---|---|---|---|---|")
    rows = []
    for arch in ("vit_small", "vit_small_ics"):
        source = {k: torch.randn_like(v) if v.is_floating_point() else v
                  for k, v in build_vit(arch, img_size=(256, 128)).trunk.state_dict().items()}
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "dino.pth"
            teacher = {f"backbone.{k}": v for k, v in source.items()} | {"head.mlp.0.weight": torch.randn(8, 384)}
            torch.save({"teacher": teacher, "student": {}, "args": argparse.Namespace(arch=arch)}, path)
            for height, width in ((256, 128), (384, 128)):
                model = build_vit(arch, img_size=(height, width))
                start = time.perf_counter()
                done = load_vit_weights(model.trunk, path, hw_ratio=2)
                seconds = time.perf_counter() - start
                loaded = model.trunk.state_dict()
                equal = sum(torch.equal(loaded[k], v) for k, v in source.items() if k != "pos_embed")
                expected = reference_resize(source["pos_embed"], height // PATCH_SIZE, width // PATCH_SIZE, 2)
                diff = (loaded["pos_embed"] - expected).abs().max().item()
                tokens = f"{done['resized'][0]} -> {done['resized'][1]}" if done["resized"] else "kept"
                row = dict(arch=arch, input=f"{height}x{width}", loaded=done["loaded"], total=done["total"],
                           equal=equal, others=len(source) - 1, tokens=tokens, diff=diff, seconds=seconds)
                rows.append(row)
                print(f"| {arch} | {row['input']} | {done['loaded']} / {done['total']} | {equal} / {len(source) - 1} "
                      f"| {tokens} | {diff:.1e} | {seconds:.2f} |")
    return rows


if __name__ == "__main__":
    main()
