"""Clips of rendered pictures: H.264 MP4 (plays in browsers and chat tools) and GIF.

The MP4 is encoded by the ffmpeg binary that ``imageio-ffmpeg`` ships: libx264, yuv420p
(the pixel format every H.264 decoder takes; it needs even width and height, so frames are
padded by one white row/column where needed) and ``-movflags +faststart`` (the index first,
so a browser starts playing before the download ends). :func:`mp4_video_codec` reads the
codec tag back from the container (ISO/IEC 14496-12 boxes ``moov/trak/mdia/minf/stbl/stsd``).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import cv2
import numpy as np

__all__ = ["mp4_video_codec", "write_gif", "write_mp4"]


def _same_size_even(frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Pad every frame (white, bottom/right) to the largest size, rounded up to even."""
    h = max(f.shape[0] for f in frames)
    w = max(f.shape[1] for f in frames)
    h, w = h + h % 2, w + w % 2
    out = []
    for f in frames:
        pad = ((0, h - f.shape[0]), (0, w - f.shape[1]), (0, 0))
        out.append(np.pad(f, pad, constant_values=255))
    return out


def write_mp4(frames: Sequence[np.ndarray], path: str, fps: float = 2.0) -> None:
    """Encode BGR frames ``[H, W, 3]`` uint8 as an H.264 MP4 at ``fps`` frames per second.

    Raises ValueError without frames.
    """
    try:
        import imageio_ffmpeg
    except ImportError as err:
        raise ImportError(
            "writing MP4 needs the imageio-ffmpeg package (pip install imageio-ffmpeg); "
            "--video gif works without it"
        ) from err
    if not frames:
        raise ValueError(f"no frames to write to {path}")
    frames = _same_size_even(frames)
    h, w = frames[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(
        path,
        (w, h),
        fps=fps,
        codec="libx264",
        pix_fmt_in="rgb24",
        pix_fmt_out="yuv420p",
        quality=None,
        output_params=["-movflags", "+faststart", "-crf", "23"],
        macro_block_size=1,
        ffmpeg_log_level="error",
    )
    writer.send(None)  # start the encoder
    for frame in frames:
        writer.send(np.ascontiguousarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))
    writer.close()


def write_gif(frames: Sequence[np.ndarray], path: str, fps: float = 2.0) -> None:
    """BGR frames as a looping GIF at half resolution."""
    from PIL import Image

    if not frames:
        raise ValueError(f"no frames to write to {path}")
    pil = [Image.fromarray(cv2.cvtColor(f, cv2.COLOR_BGR2RGB)).reduce(2) for f in frames]
    pil[0].save(path, save_all=True, append_images=pil[1:], duration=int(1000 / fps), loop=0)


_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl"}


def _boxes(data: bytes, start: int, end: int):
    """(type, payload start, payload end) of the ISO-BMFF boxes in ``data[start:end]``."""
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        header = 8
        if size == 1:  # 64-bit size follows
            size = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
            header = 16
        elif size == 0:  # to the end
            size = end - pos
        if size < header:
            raise ValueError(f"corrupt MP4 box {kind!r} of size {size} at byte {pos}")
        yield kind, pos + header, pos + size
        pos += size


def mp4_video_codec(path: str) -> list[str]:
    """The sample-entry codec tags of an MP4's tracks (e.g. ``["avc1"]`` for H.264), read
    from each ``stsd`` box."""
    with open(path, "rb") as f:
        data = f.read()
    tags: list[str] = []

    def walk(start: int, end: int) -> None:
        for kind, a, b in _boxes(data, start, end):
            if kind in _CONTAINERS:
                walk(a, b)
            elif kind == b"stsd":
                # version/flags (4), entry count (4), then entries: size (4), type (4)
                count = struct.unpack(">I", data[a + 4 : a + 8])[0]
                pos = a + 8
                for _ in range(count):
                    size, tag = struct.unpack(">I4s", data[pos : pos + 8])
                    tags.append(tag.decode("latin-1"))
                    pos += size

    walk(0, len(data))
    return tags
