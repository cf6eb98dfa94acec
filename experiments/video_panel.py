"""A `caml-rl visualize` video as a small looping GIF for a README (GitHub shows GIFs inline, not mp4).

Keeps every ``--every``-th frame, scaled by ``--scale``; the visualize video already puts the steps side
by side (before and after adaptation), so the GIF is the before/after panel.

    caml-rl visualize experiments/results/ant_dir/caml_seed0 --task direction=-1 --steps 0 1 --episodes 4 --out /tmp/vis
    python experiments/video_panel.py /tmp/vis/task00_video.mp4 docs/ant_direction_adaptation.gif
"""

from __future__ import annotations

import argparse

import imageio.v3 as iio
import numpy as np
from PIL import Image


def panel(video: str, out: str, every: int, scale: float, fps: float) -> tuple[int, tuple[int, int]]:
    frames = iio.imread(video)[::every]
    size = (round(frames.shape[2] * scale), round(frames.shape[1] * scale))
    images = [Image.fromarray(np.asarray(f)).resize(size, Image.LANCZOS) for f in frames]
    palette = images[len(images) // 2].quantize(colors=128)  # one palette: no flicker between frames
    images = [im.quantize(palette=palette, dither=Image.Dither.NONE) for im in images]
    images[0].save(out, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0, optimize=True)
    return len(images), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("video")
    parser.add_argument("out")
    parser.add_argument("--every", type=int, default=2, help="keep every N-th frame (default 2)")
    parser.add_argument("--scale", type=float, default=0.75, help="size factor (default 0.75)")
    parser.add_argument("--fps", type=float, default=10.0, help="frames per second of the GIF (default 10)")
    args = parser.parse_args()
    n, size = panel(args.video, args.out, args.every, args.scale, args.fps)
    print(f"wrote {args.out}: {n} frames of {size[0]}x{size[1]}")


if __name__ == "__main__":
    main()
