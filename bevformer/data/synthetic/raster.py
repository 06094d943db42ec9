"""numba kernels of the synthetic renderer: camera images and a spinning lidar.

Camera (pinhole, OpenCV convention: pixel centres at integer coordinates, ``u = fx x/z + cx``):
1. every pixel casts a ray; rays that go down hit the ground plane z = 0 (textured from a
   top-down ground image, mip-mapped by the pixel's ground footprint, fogged with distance),
   the others get a sky gradient; the ground's camera depth fills the z-buffer;
2. each object box (M boxes) contributes its front-facing faces (a convex box's front faces
   tile its silhouette exactly once); each face quad is clipped to the near plane, projected,
   and scan-converted; the per-pixel depth is the exact ray/face-plane intersection, tested
   against the z-buffer; the face is shaded with a class texture and Lambert light from a fixed
   sun. Each box also casts a ground shadow: a quad around its footprint, shifted away from
   the sun, that darkens the ground pixels it covers (ground only: the z-buffer depth must be
   the shadow plane's). Rows are split into bands processed in parallel (no write races).
The per-box count of front-face pixels (visible or not) and the final id buffer give the
visible fraction of each box.

Lidar: rays (rings x azimuths) from the lidar origin, first hit among the boxes (slab test in
box coordinates) and the ground, up to a maximum range.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

__all__ = ["cast_lidar", "render_camera"]

NEAR = 0.05
SKY_TOP = (0.72, 0.45, 0.25)  # BGR, 0-1
SKY_HORIZON = (0.93, 0.86, 0.80)
HAZE = (0.80, 0.78, 0.76)
FOG_DISTANCE = 350.0
N_BANDS = 32
SHADOW = 5  # face code of an object's ground shadow
SHADOW_MARGIN = 0.15  # metres around the footprint
SHADOW_DIM = 0.6


@nb.njit(cache=True, inline="always")
def _hash01(a: int, b: int, c: int) -> float:
    """Deterministic pseudo-random number in [0, 1) from three integers."""
    h = (a * 73856093) ^ (b * 19349663) ^ (c * 83492791)
    h = (h ^ (h >> 13)) * 1274126177
    h = h ^ (h >> 16)
    return (h & 0xFFFFFF) / 16777216.0


@nb.njit(cache=True)
def _hsv_to_bgr(h_deg: float, s: float, v: float) -> tuple[float, float, float]:
    h = (h_deg % 360.0) / 60.0
    i = int(h)
    f = h - i
    p = v * (1 - s)
    q = v * (1 - s * f)
    t = v * (1 - s * (1 - f))
    if i == 0:
        r, g, b = v, t, p
    elif i == 1:
        r, g, b = q, v, p
    elif i == 2:
        r, g, b = p, v, t
    elif i == 3:
        r, g, b = p, q, v
    elif i == 4:
        r, g, b = t, p, v
    else:
        r, g, b = v, p, q
    return b, g, r


@nb.njit(cache=True)
def _object_albedo(
    cls: int,
    face: int,
    lx: float,
    ly: float,
    lz: float,
    length: float,
    width: float,
    height: float,
    hue: float,
    seed: float,
) -> tuple[float, float, float]:
    """Class texture (BGR albedo) at box-local point (lx along length, ly left, lz up from the
    centre) on ``face`` (0 front, 1 back, 2 left, 3 right, 4 top).

    Each class keeps its hue everywhere; shape-specific patterns vary saturation and value.
    Every class with a heading that matters (all but barriers and cones) is lighter at the
    front (lamps, windscreen, a face) and darker at the back, and the light front wraps
    round the side faces' front end, so a camera sees which way an object points, as it
    does on real vehicles and people."""
    hue = hue + (seed - 0.5) * 10.0
    sat = 0.78 + 0.15 * seed
    val = 0.80
    zt = (lz + height / 2) / height  # 0 bottom .. 1 top
    xt = (lx + length / 2) / length  # 0 back .. 1 front
    if cls == 0 or cls == 3:  # car, bus: darker window band, a bonnet ahead of it
        if face != 4 and 0.58 < zt < 0.88 and 0.08 < xt < (0.7 if cls == 0 else 0.92):
            val = 0.42
            sat = 0.55
        if zt < 0.12:
            val = 0.35  # skirt / wheels
    elif cls == 1 or cls == 2:  # truck, construction vehicle: cab at the front, cargo ribs
        if xt > 0.78 and face != 4 and zt > 0.55:
            val = 0.45
        elif xt <= 0.78 and math.floor(lx * 1.5) % 2 == 0:
            val = 0.68
        if cls == 2 and zt > 0.5 and math.floor((lx + lz) * 1.2) % 2 == 0:
            sat = 0.45  # hazard stripes
    elif cls == 4:  # trailer: vertical ribs
        if math.floor(lx * 2.0) % 2 == 0:
            val = 0.66
    elif cls == 5:  # barrier: diagonal stripes
        if math.floor((ly + lz) * 2.5) % 2 == 0:
            sat = 0.35
            val = 0.95
    elif cls == 6 or cls == 7:  # motorcycle, bicycle: dark wheels, checker upper part
        if zt < 0.35:
            val = 0.35
        elif math.floor(lx * 4.0) % 2 == 0:
            val = 0.62
    elif cls == 8:  # pedestrian: darker legs, lighter head
        if zt < 0.45:
            val = 0.45
        elif zt > 0.86:
            sat = 0.45
            val = 0.95
    elif cls == 9:  # traffic cone: light bands
        if 0.45 < zt < 0.6 or 0.75 < zt < 0.85:
            sat = 0.3
            val = 0.98
    if cls == 8:  # pedestrian: light face and chest, dark back, both wrapping round the sides
        if zt > 0.45 and (face == 0 or (face != 4 and xt > 0.6)):
            sat = 0.35
            val = 0.98
        elif zt > 0.45 and (face == 1 or (face != 4 and xt < 0.4)):
            val = 0.5
    elif cls != 5 and cls != 9:  # vehicles and cycles: light nose, dark tail, both wrapping
        side = face == 2 or face == 3
        if face == 0 or (side and xt > 0.88):
            sat = 0.4
            val = 1.0
        elif face == 1 or (side and xt < 0.06):
            val = 0.3
    return _hsv_to_bgr(hue, sat, val)


@nb.njit(cache=True)
def _ground_color(tex: np.ndarray, res: float, ox: float, oy: float, x: float, y: float):
    """Bilinear-free (nearest) lookup of a BGR ground texture; outside: plain verge colour."""
    ix = int(math.floor((x - ox) / res))
    iy = int(math.floor((y - oy) / res))
    if ix < 0 or iy < 0 or iy >= tex.shape[0] or ix >= tex.shape[1]:
        n = _hash01(int(math.floor(x * 2)), int(math.floor(y * 2)), 7)
        return 0.36 + 0.05 * n, 0.45 + 0.05 * n, 0.47 + 0.05 * n
    return tex[iy, ix, 0] / 255.0, tex[iy, ix, 1] / 255.0, tex[iy, ix, 2] / 255.0


@nb.njit(cache=True)
def _ground_bilinear(tex: np.ndarray, res: float, ox: float, oy: float, x: float, y: float):
    """Bilinear lookup (texel centres at (i + 0.5) * res), for magnified ground near the
    camera; falls back to the nearest lookup at the texture border."""
    u = (x - ox) / res - 0.5
    v = (y - oy) / res - 0.5
    ix = int(math.floor(u))
    iy = int(math.floor(v))
    if ix < 0 or iy < 0 or iy + 1 >= tex.shape[0] or ix + 1 >= tex.shape[1]:
        return _ground_color(tex, res, ox, oy, x, y)
    wx = u - ix
    wy = v - iy
    w00 = (1 - wx) * (1 - wy) / 255.0
    w01 = wx * (1 - wy) / 255.0
    w10 = (1 - wx) * wy / 255.0
    w11 = wx * wy / 255.0
    b = tex[iy, ix, 0] * w00 + tex[iy, ix + 1, 0] * w01 + tex[iy + 1, ix, 0] * w10
    g = tex[iy, ix, 1] * w00 + tex[iy, ix + 1, 1] * w01 + tex[iy + 1, ix, 1] * w10
    r = tex[iy, ix, 2] * w00 + tex[iy, ix + 1, 2] * w01 + tex[iy + 1, ix, 2] * w10
    b += tex[iy + 1, ix + 1, 0] * w11
    g += tex[iy + 1, ix + 1, 1] * w11
    r += tex[iy + 1, ix + 1, 2] * w11
    return b, g, r


@nb.njit(cache=True, parallel=True)
def _background(img, depth, ids, K, R, cam, tex0, tex1, tex2, tex3, tex_res, tex_origin):
    """Ground (z = 0) and sky for every pixel; camera-z depth into ``depth``."""
    H, W = depth.shape
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    for i in nb.prange(H):
        ry = (i - cy) / fy
        bx = R[0, 1] * ry + R[0, 2]
        by = R[1, 1] * ry + R[1, 2]
        bz = R[2, 1] * ry + R[2, 2]
        for j in range(W):
            rx = (j - cx) / fx
            # ray direction in global, scaled so that its camera-z component is 1
            dx = R[0, 0] * rx + bx
            dy = R[1, 0] * rx + by
            dz = R[2, 0] * rx + bz
            norm = math.sqrt(dx * dx + dy * dy + dz * dz)
            ids[i, j] = -1
            if dz < -1e-6 and -cam[2] / dz * norm < 5000.0:
                t = -cam[2] / dz
                x = cam[0] + t * dx
                y = cam[1] + t * dy
                dist = t * norm
                # ground footprint of one pixel, in texels of level 0
                foot = dist / (fx * (-dz / norm) + 1e-9) / tex_res
                if foot < 1.0:
                    b, g, r = _ground_bilinear(tex0, tex_res, tex_origin[0], tex_origin[1], x, y)
                elif foot < 2.0:
                    b, g, r = _ground_color(tex0, tex_res, tex_origin[0], tex_origin[1], x, y)
                elif foot < 4.0:
                    b, g, r = _ground_color(tex1, tex_res * 2, tex_origin[0], tex_origin[1], x, y)
                elif foot < 8.0:
                    b, g, r = _ground_color(tex2, tex_res * 4, tex_origin[0], tex_origin[1], x, y)
                else:
                    b, g, r = _ground_color(tex3, tex_res * 8, tex_origin[0], tex_origin[1], x, y)
                f = 1.0 - math.exp(-dist / FOG_DISTANCE)
                b = b * (1 - f) + HAZE[0] * f
                g = g * (1 - f) + HAZE[1] * f
                r = r * (1 - f) + HAZE[2] * f
                depth[i, j] = t
            else:
                e = max(0.0, min(1.0, dz / norm * 2.5))
                b = SKY_HORIZON[0] * (1 - e) + SKY_TOP[0] * e
                g = SKY_HORIZON[1] * (1 - e) + SKY_TOP[1] * e
                r = SKY_HORIZON[2] * (1 - e) + SKY_TOP[2] * e
                depth[i, j] = np.inf
            img[i, j, 0] = min(255, int(b * 255.0 + 0.5))
            img[i, j, 1] = min(255, int(g * 255.0 + 0.5))
            img[i, j, 2] = min(255, int(r * 255.0 + 0.5))


@nb.njit(cache=True)
def _boxes_in_camera(centers, yaws, R, cam):
    """Box centres (M, 3) and axes (M, 3, 3) (rows: length, width, up) in the camera frame."""
    M = centers.shape[0]
    c = np.empty((M, 3))
    axes = np.empty((M, 3, 3))
    g = np.zeros((3, 3))
    g[2, 2] = 1.0
    for m in range(M):
        cs, sn = math.cos(yaws[m]), math.sin(yaws[m])
        g[0, 0], g[0, 1] = cs, sn
        g[1, 0], g[1, 1] = -sn, cs
        for k in range(3):  # camera = R^T (global - cam)
            c[m, k] = (
                R[0, k] * (centers[m, 0] - cam[0])
                + R[1, k] * (centers[m, 1] - cam[1])
                + R[2, k] * (centers[m, 2] - cam[2])
            )
            for a in range(3):
                axes[m, a, k] = R[0, k] * g[a, 0] + R[1, k] * g[a, 1] + R[2, k] * g[a, 2]
    return c, axes


@nb.njit(cache=True)
def _setup_faces(K, R, cam, centers, yaws, lwhs, sun, H, W):
    """Front-facing faces of all boxes, clipped to z >= NEAR and projected.

    Returns per face F: box index, face code, vertex count, screen polygon (F, 8, 2), face
    plane (normal (F, 3) and offset (F,)), Lambert light (F,), row range (F, 2)."""
    M = centers.shape[0]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    box_c, box_axes = _boxes_in_camera(centers, yaws, R, cam)
    F = M * 6
    f_box = np.empty(F, dtype=np.int64)
    f_code = np.empty(F, dtype=np.int64)
    f_nv = np.empty(F, dtype=np.int64)
    f_poly = np.empty((F, 8, 2))
    f_normal = np.empty((F, 3))
    f_plane = np.empty(F)
    f_light = np.empty(F)
    f_rows = np.empty((F, 2), dtype=np.int64)
    poly = np.empty((4, 3))
    clipped = np.empty((8, 3))
    fc = np.empty(3)
    n = 0
    for m in range(M):
        c = box_c[m]
        axes = box_axes[m]
        # face f < 5: axis a = f // 2 (0 length, 1 width, 2 up), outward sign +1 for even f.
        # The bottom face lies on the ground and is never seen; f = SHADOW is instead the
        # box's shadow, a ground quad around the footprint shifted away from the sun.
        for f in range(6):
            a = f // 2
            sgn = 1.0 if f % 2 == 0 else -1.0
            b1 = (a + 1) % 3
            b2 = (a + 2) % 3
            half1 = lwhs[m, b1] / 2
            half2 = lwhs[m, b2] / 2
            if f == SHADOW:
                sgn = -1.0
                reach = 0.35 * lwhs[m, 2] / max(sun[2], 0.1)
                for k in range(3):
                    shift = -(R[0, k] * sun[0] + R[1, k] * sun[1]) * reach
                    fc[k] = c[k] - axes[2, k] * lwhs[m, 2] / 2 + shift
                b1, b2 = 0, 1
                half1 = lwhs[m, 0] / 2 + SHADOW_MARGIN
                half2 = lwhs[m, 1] / 2 + SHADOW_MARGIN
                n0, n1, n2 = axes[2, 0], axes[2, 1], axes[2, 2]  # the ground's up normal
            else:
                n0, n1, n2 = sgn * axes[a, 0], sgn * axes[a, 1], sgn * axes[a, 2]
                for k in range(3):
                    fc[k] = c[k] + sgn * axes[a, k] * lwhs[m, a] / 2
            plane = n0 * fc[0] + n1 * fc[1] + n2 * fc[2]
            if plane >= 0.0:  # back-facing (the camera is at the origin)
                continue
            for q in range(4):  # corners in order around the face
                s1 = 1.0 if (q == 0 or q == 1) else -1.0
                s2 = 1.0 if (q == 0 or q == 3) else -1.0
                for k in range(3):
                    poly[q, k] = fc[k] + s1 * half1 * axes[b1, k] + s2 * half2 * axes[b2, k]
            nv = 0  # Sutherland-Hodgman against the near plane
            for q in range(4):
                q1 = (q + 1) % 4
                in0 = poly[q, 2] >= NEAR
                in1 = poly[q1, 2] >= NEAR
                if in0:
                    clipped[nv, :] = poly[q]
                    nv += 1
                if in0 != in1:
                    t = (NEAR - poly[q, 2]) / (poly[q1, 2] - poly[q, 2])
                    for k in range(3):
                        clipped[nv, k] = poly[q, k] + t * (poly[q1, k] - poly[q, k])
                    nv += 1
            if nv < 3:
                continue
            xmin, xmax, ymin, ymax = 1e30, -1e30, 1e30, -1e30
            for q in range(nv):
                u = fx * clipped[q, 0] / clipped[q, 2] + cx
                v = fy * clipped[q, 1] / clipped[q, 2] + cy
                f_poly[n, q, 0] = u
                f_poly[n, q, 1] = v
                xmin, xmax = min(xmin, u), max(xmax, u)
                ymin, ymax = min(ymin, v), max(ymax, v)
            if xmax < 0 or xmin > W - 1 or ymax < 0 or ymin > H - 1:
                continue
            f_box[n] = m
            f_code[n] = f
            f_nv[n] = nv
            f_normal[n, 0], f_normal[n, 1], f_normal[n, 2] = n0, n1, n2
            f_plane[n] = plane
            # Lambert term in the global frame: n_global = R n_cam
            ng0 = R[0, 0] * n0 + R[0, 1] * n1 + R[0, 2] * n2
            ng1 = R[1, 0] * n0 + R[1, 1] * n1 + R[1, 2] * n2
            ng2 = R[2, 0] * n0 + R[2, 1] * n1 + R[2, 2] * n2
            f_light[n] = 0.45 + 0.6 * max(0.0, ng0 * sun[0] + ng1 * sun[1] + ng2 * sun[2])
            f_rows[n, 0] = max(0, int(math.ceil(ymin)))
            f_rows[n, 1] = min(H - 1, int(math.floor(ymax)))
            n += 1
    return (
        f_box[:n],
        f_code[:n],
        f_nv[:n],
        f_poly[:n],
        f_normal[:n],
        f_plane[:n],
        f_light[:n],
        f_rows[:n],
        box_c,
        box_axes,
    )


@nb.njit(cache=True, parallel=True)
def _boxes(img, depth, ids, coverage, K, R, cam, centers, yaws, lwhs, classes, hues, seeds, sun):
    H, W = depth.shape
    M = centers.shape[0]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    f_box, f_code, f_nv, f_poly, f_normal, f_plane, f_light, f_rows, box_c, box_axes = _setup_faces(
        K, R, cam, centers, yaws, lwhs, sun, H, W
    )
    band_rows = (H + N_BANDS - 1) // N_BANDS
    band_cov = np.zeros((N_BANDS, M), dtype=np.int64)
    for band in nb.prange(N_BANDS):
        r0 = band * band_rows
        r1 = min(H, r0 + band_rows)
        for n in range(len(f_box)):
            i0 = max(r0, f_rows[n, 0])
            i1 = min(r1 - 1, f_rows[n, 1])
            if i0 > i1:
                continue
            m = f_box[n]
            nv = f_nv[n]
            px = f_poly[n, :, 0]
            py = f_poly[n, :, 1]
            n0, n1, n2 = f_normal[n, 0], f_normal[n, 1], f_normal[n, 2]
            plane, light = f_plane[n], f_light[n]
            c = box_c[m]
            axes = box_axes[m]
            for i in range(i0, i1 + 1):
                ry = (i - cy) / fy
                # span of the convex polygon on this row: crossings of its edges with y = i
                xlo, xhi = 1e30, -1e30
                for q in range(nv):
                    q2 = (q + 1) % nv
                    ya, yb = py[q], py[q2]
                    if (ya <= i <= yb) or (yb <= i <= ya):
                        if ya == yb:
                            xa, xb = px[q], px[q2]
                        else:
                            xa = px[q] + (i - ya) * (px[q2] - px[q]) / (yb - ya)
                            xb = xa
                        xlo = min(xlo, xa, xb)
                        xhi = max(xhi, xa, xb)
                j0 = max(0, int(math.ceil(xlo)))
                j1 = min(W - 1, int(math.floor(xhi)))
                if f_code[n] == SHADOW:
                    for j in range(j0, j1 + 1):
                        if ids[i, j] != -1:
                            continue  # an object, drawn already, or the sky
                        denom = n0 * (j - cx) / fx + n1 * ry + n2
                        if denom < -1e-12 and abs(plane / denom - depth[i, j]) < 1e-3 * depth[i, j]:
                            for k in range(3):
                                img[i, j, k] = int(img[i, j, k] * SHADOW_DIM)
                    continue
                for j in range(j0, j1 + 1):
                    band_cov[band, m] += 1
                    rx = (j - cx) / fx
                    denom = n0 * rx + n1 * ry + n2
                    if denom >= -1e-12:
                        continue
                    z = plane / denom  # exact ray / face-plane intersection
                    if z >= depth[i, j] or z < NEAR:
                        continue
                    depth[i, j] = z
                    ids[i, j] = m
                    dx = rx * z - c[0]
                    dy = ry * z - c[1]
                    dz = z - c[2]
                    lx = dx * axes[0, 0] + dy * axes[0, 1] + dz * axes[0, 2]
                    ly = dx * axes[1, 0] + dy * axes[1, 1] + dz * axes[1, 2]
                    lz = dx * axes[2, 0] + dy * axes[2, 1] + dz * axes[2, 2]
                    b, g, r = _object_albedo(
                        classes[m],
                        f_code[n],
                        lx,
                        ly,
                        lz,
                        lwhs[m, 0],
                        lwhs[m, 1],
                        lwhs[m, 2],
                        hues[classes[m]],
                        seeds[m],
                    )
                    img[i, j, 0] = min(255, int(b * light * 255.0 + 0.5))
                    img[i, j, 1] = min(255, int(g * light * 255.0 + 0.5))
                    img[i, j, 2] = min(255, int(r * light * 255.0 + 0.5))
    for m in range(M):
        for band in range(N_BANDS):
            coverage[m] += band_cov[band, m]


def render_camera(
    height: int,
    width: int,
    intrinsic: np.ndarray,
    cam2global: np.ndarray,
    ground_mips: tuple[np.ndarray, ...],
    ground_res: float,
    ground_origin: np.ndarray,
    centers: np.ndarray,
    yaws: np.ndarray,
    lwhs: np.ndarray,
    classes: np.ndarray,
    hues: np.ndarray,
    seeds: np.ndarray,
    sun: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Renders one camera image.

    Boxes (M): ``centers`` (M, 3) global, ``yaws`` (M,), ``lwhs`` (M, 3) length/width/height,
    ``classes`` (M,) class index into ``hues`` (degrees), ``seeds`` (M,) in [0, 1).
    ``ground_mips``: four BGR uint8 top-down images of the ground, level k at
    ``ground_res * 2**k`` metres per texel, texel (0, 0) at ``ground_origin`` (global xy).
    Returns ``(image (H, W, 3) uint8 BGR, ids (H, W) int32 box index or -1, coverage (M,)
    int64 pixels of each box's silhouette inside the image, occluded or not)``.
    """
    img = np.empty((height, width, 3), dtype=np.uint8)
    depth = np.empty((height, width), dtype=np.float64)
    ids = np.empty((height, width), dtype=np.int32)
    R = np.ascontiguousarray(cam2global[:3, :3], dtype=np.float64)
    cam = np.ascontiguousarray(cam2global[:3, 3], dtype=np.float64)
    K = np.asarray(intrinsic, dtype=np.float64)
    origin = np.asarray(ground_origin, dtype=np.float64)
    _background(img, depth, ids, K, R, cam, *ground_mips, float(ground_res), origin)
    coverage = np.zeros(len(centers), dtype=np.int64)
    if len(centers):
        _boxes(
            img,
            depth,
            ids,
            coverage,
            K,
            R,
            cam,
            np.ascontiguousarray(centers, dtype=np.float64),
            np.ascontiguousarray(yaws, dtype=np.float64),
            np.ascontiguousarray(lwhs, dtype=np.float64),
            np.ascontiguousarray(classes, dtype=np.int64),
            np.asarray(hues, dtype=np.float64),
            np.ascontiguousarray(seeds, dtype=np.float64),
            np.asarray(sun, dtype=np.float64),
        )
    return img, ids, coverage


@nb.njit(cache=True, parallel=True)
def _lidar(origin, dirs, centers, yaws, lwhs, max_range, out_t, out_id):
    n = dirs.shape[0]
    M = centers.shape[0]
    for r in nb.prange(n):
        dx, dy, dz = dirs[r, 0], dirs[r, 1], dirs[r, 2]
        best = max_range
        hit = -2  # -2 nothing, -1 ground, >= 0 box index
        if dz < -1e-9:
            tg = -origin[2] / dz
            if tg < best:
                best = tg
                hit = -1
        for m in range(M):
            cs, sn = math.cos(yaws[m]), math.sin(yaws[m])
            ox = origin[0] - centers[m, 0]
            oy = origin[1] - centers[m, 1]
            oz = origin[2] - centers[m, 2]
            t_in, t_out = 0.0, best
            ok = True
            for a in range(3):
                if a == 0:
                    lo = ox * cs + oy * sn
                    ld = dx * cs + dy * sn
                elif a == 1:
                    lo = -ox * sn + oy * cs
                    ld = -dx * sn + dy * cs
                else:
                    lo = oz
                    ld = dz
                h = lwhs[m, a] / 2
                if abs(ld) < 1e-12:
                    if abs(lo) > h:
                        ok = False
                        break
                    continue
                t1 = (-h - lo) / ld
                t2 = (h - lo) / ld
                if t1 > t2:
                    t1, t2 = t2, t1
                t_in = max(t_in, t1)
                t_out = min(t_out, t2)
                if t_in > t_out:
                    ok = False
                    break
            if ok and t_in > 0.0 and t_in < best:
                best = t_in
                hit = m
        out_t[r] = best
        out_id[r] = hit


def cast_lidar(
    origin: np.ndarray,
    directions: np.ndarray,
    centers: np.ndarray,
    yaws: np.ndarray,
    lwhs: np.ndarray,
    max_range: float,
) -> tuple[np.ndarray, np.ndarray]:
    """First hits of P rays (``directions`` (P, 3) unit, global) from ``origin`` (3,).

    Returns ``(range (P,), hit (P,))`` with hit = box index, -1 for the ground, -2 for no
    return within ``max_range`` metres."""
    out_t = np.empty(len(directions), dtype=np.float64)
    out_id = np.empty(len(directions), dtype=np.int64)
    _lidar(
        np.asarray(origin, dtype=np.float64),
        np.ascontiguousarray(directions, dtype=np.float64),
        np.ascontiguousarray(centers, dtype=np.float64).reshape(-1, 3),
        np.ascontiguousarray(yaws, dtype=np.float64),
        np.ascontiguousarray(lwhs, dtype=np.float64).reshape(-1, 3),
        float(max_range),
        out_t,
        out_id,
    )
    return out_t, out_id
