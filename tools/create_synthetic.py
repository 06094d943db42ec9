"""Writes the synthetic nuScenes-format dataset (``v1.0-mini`` tables, camera images, lidar
point clouds, maps); see ``bevformer/data/synthetic/README.md``.

    python tools/create_synthetic.py --out data/nuscenes/synthetic [--scenes 10]
        [--samples-per-scene 40] [--image-size 1600x900] [--seed 0] [--sweeps 0] [--workers 2]
"""

from __future__ import annotations

import argparse
import sys
import time

from bevformer.data.synthetic import generate


def _image_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected WIDTHxHEIGHT such as 1600x900, got {text!r}"
        ) from None
    return w, h


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--out", required=True, help="dataroot to write")
    parser.add_argument("--scenes", type=int, default=10, help="number of v1.0-mini scenes (1-10)")
    parser.add_argument("--samples-per-scene", type=int, default=40, help="keyframes per scene")
    parser.add_argument("--image-size", type=_image_size, default=(1600, 900), help="WxH")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sweeps", type=int, default=0, help="non-key frames between keyframes")
    parser.add_argument("--workers", type=int, default=2, help="processes (one scene each)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        out = generate(
            args.out,
            scenes=args.scenes,
            samples_per_scene=args.samples_per_scene,
            image_size=args.image_size,
            seed=args.seed,
            sweeps=args.sweeps,
            workers=args.workers,
            overwrite=args.overwrite,
        )
    except (FileExistsError, NotADirectoryError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
