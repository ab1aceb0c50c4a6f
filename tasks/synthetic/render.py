"""A small procedural 3D world rendered by vectorised ray casting (numpy).

World coordinates are metric and y-up: the floor is the plane y = 0, the room is the box
[-half_x, half_x] x [0, height] x [-half_z, half_z]. A pinhole camera with yaw (about y)
and pitch (about its right axis) looks along ``forward``; image x grows along ``right`` and
image y grows downwards.

Rays are built with *unnormalised* directions ``D = x_c * right + y_c * up + forward`` so
that the ray parameter ``t`` of a hit is directly its z-buffer depth (distance along the
optical axis), the quantity depth datasets (NYU, Taskonomy) store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

# Segmentation ids: 0 ceiling ("background"), 1 floor, 2 wall, 3 + shape id per object.
SEG_BACKGROUND, SEG_FLOOR, SEG_WALL = 0, 1, 2
SEG_FIRST_SHAPE = 3


class Shape(IntEnum):
    SPHERE = 0
    BOX = 1
    CYLINDER = 2
    CONE = 3


SHAPE_NAMES = tuple(s.name.lower() for s in Shape)
SEG_CLASS_NAMES = ("background", "floor", "wall") + SHAPE_NAMES
NUM_SEG_CLASSES = len(SEG_CLASS_NAMES)


@dataclass
class Camera:
    position: np.ndarray  # (3,) world
    yaw: float  # radians; 0 looks along +z
    pitch: float  # radians; positive looks up
    fov_x: float = np.deg2rad(60.0)  # horizontal field of view

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(right, up, forward) unit vectors in world coordinates."""
        cy, sy = np.cos(self.yaw), np.sin(self.yaw)
        cp, sp = np.cos(self.pitch), np.sin(self.pitch)
        forward = np.array([sy * cp, sp, cy * cp])
        right = np.array([cy, 0.0, -sy])
        up = np.cross(forward, right)
        return right, up, forward

    def focal(self, width: int) -> float:
        return (width / 2.0) / np.tan(self.fov_x / 2.0)

    def intrinsics(self, height: int, width: int) -> np.ndarray:
        f = self.focal(width)
        return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])

    def rays(self, height: int, width: int) -> np.ndarray:
        """Unnormalised world ray directions (H*W, 3) through pixel centres, z_cam = 1."""
        f = self.focal(width)
        u = (np.arange(width) + 0.5 - width / 2.0) / f
        v = -(np.arange(height) + 0.5 - height / 2.0) / f
        xc, yc = np.meshgrid(u, v)  # (H, W)
        right, up, forward = self.axes()
        d = xc[..., None] * right + yc[..., None] * up + forward
        return d.reshape(-1, 3)

    def project(self, points: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """World points (N, 3) -> pixel coordinates (N, 2) (x, y; pixel centres at +0.5) and depth (N,)."""
        right, up, forward = self.axes()
        rel = points - self.position
        z = rel @ forward
        x = rel @ right
        y = rel @ up
        f = self.focal(width)
        with np.errstate(divide="ignore", invalid="ignore"):
            px = f * x / z + width / 2.0
            py = -f * y / z + height / 2.0
        return np.stack([px, py], axis=-1), z


@dataclass
class Obj:
    shape: Shape
    center: np.ndarray  # (x, z) footprint centre on the floor
    size: np.ndarray  # sphere: (r,); box: (hx, hy, hz); cylinder: (r, h); cone: (r, h)
    color: np.ndarray  # (3,) albedo in [0, 1]
    rotation: float = 0.0  # yaw of a box

    @property
    def footprint_radius(self) -> float:
        if self.shape == Shape.BOX:
            return float(np.hypot(self.size[0], self.size[2]))
        return float(self.size[0])

    @property
    def height(self) -> float:
        if self.shape == Shape.SPHERE:
            return float(2 * self.size[0])
        if self.shape == Shape.BOX:
            return float(2 * self.size[1])
        return float(self.size[1])


@dataclass
class Texture:
    kind: str  # "checker" | "stripes" | "noise"
    color_a: np.ndarray
    color_b: np.ndarray
    scale: float
    noise_grid: np.ndarray | None = None  # (G, G) values in [0, 1] for "noise"


@dataclass
class Scene:
    half_x: float
    half_z: float
    height: float
    floor_tex: Texture
    wall_tex: Texture
    ceiling_color: np.ndarray
    light_dir: np.ndarray  # unit vector pointing towards the light
    ambient: float
    objects: list[Obj] = field(default_factory=list)


@dataclass
class Render:
    image: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32, metres along the optical axis
    seg: np.ndarray  # (H, W) uint8, SEG_* ids
    object_id: np.ndarray  # (H, W) int16, index into scene.objects or -1
    points: np.ndarray  # (H, W, 3) float64 world hit points


def _smallest_positive(t1: np.ndarray, t2: np.ndarray, ok1: np.ndarray, ok2: np.ndarray) -> np.ndarray:
    t1 = np.where(ok1 & (t1 > 1e-6), t1, np.inf)
    t2 = np.where(ok2 & (t2 > 1e-6), t2, np.inf)
    return np.minimum(t1, t2)


def _quadratic_roots(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    disc = b * b - 4 * a * c
    real = disc >= 0
    sq = np.sqrt(np.where(real, disc, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        safe_a = np.where(np.abs(a) > 1e-12, a, np.nan)
        r1 = (-b - sq) / (2 * safe_a)
        r2 = (-b + sq) / (2 * safe_a)
    real &= np.isfinite(r1) & np.isfinite(r2)
    return np.where(real, r1, np.inf), np.where(real, r2, np.inf), real


def intersect_object(obj: Obj, origin: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ray parameter t (P,) (inf for a miss) and unit normals (P, 3) for one object."""
    sx, sz = obj.center
    ox, oy, oz = origin[0] - sx, origin[1], origin[2] - sz
    dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]
    if obj.shape == Shape.SPHERE:
        r = obj.size[0]
        oyc = oy - r
        a = dx * dx + dy * dy + dz * dz
        b = 2 * (ox * dx + oyc * dy + oz * dz)
        c = ox * ox + oyc * oyc + oz * oz - r * r
        t1, t2, real = _quadratic_roots(a, b, c)
        t = _smallest_positive(t1, t2, real, real)
        p = origin + t[:, None] * d
        n = (p - np.array([sx, r, sz])) / r
        return t, n
    if obj.shape == Shape.CYLINDER:
        r, h = obj.size
        a = dx * dx + dz * dz
        b = 2 * (ox * dx + oz * dz)
        c = ox * ox + oz * oz - r * r
        t1, t2, real = _quadratic_roots(a, b, c)
        y1, y2 = oy + t1 * dy, oy + t2 * dy
        t_side = _smallest_positive(t1, t2, real & (y1 >= 0) & (y1 <= h), real & (y2 >= 0) & (y2 <= h))
        with np.errstate(divide="ignore", invalid="ignore"):
            t_cap = (h - oy) / dy
        cx, cz = ox + t_cap * dx, oz + t_cap * dz
        cap_ok = np.isfinite(t_cap) & (t_cap > 1e-6) & (cx * cx + cz * cz <= r * r)
        t_cap = np.where(cap_ok, t_cap, np.inf)
        t = np.minimum(t_side, t_cap)
        p = origin + t[:, None] * d
        n_side = np.stack([(p[:, 0] - sx) / r, np.zeros_like(t), (p[:, 2] - sz) / r], axis=1)
        n = np.where((t_cap < t_side)[:, None], np.array([0.0, 1.0, 0.0]), n_side)
        return t, n
    if obj.shape == Shape.CONE:
        r, h = obj.size
        k2 = (r / h) ** 2
        oyh = h - oy  # apex height minus ray origin height
        a = dx * dx + dz * dz - k2 * dy * dy
        b = 2 * (ox * dx + oz * dz + k2 * oyh * dy)
        c = ox * ox + oz * oz - k2 * oyh * oyh
        t1, t2, real = _quadratic_roots(a, b, c)
        y1, y2 = oy + t1 * dy, oy + t2 * dy
        t = _smallest_positive(t1, t2, real & (y1 >= 0) & (y1 <= h), real & (y2 >= 0) & (y2 <= h))
        with np.errstate(invalid="ignore"):
            p = origin + t[:, None] * d
        g = np.stack([p[:, 0] - sx, k2 * (h - p[:, 1]), p[:, 2] - sz], axis=1)
        with np.errstate(invalid="ignore"):
            n = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
        return t, n
    # Box rotated by obj.rotation about y, resting on the floor: slab method in local frame.
    hx, hy, hz = obj.size
    cr, sr = np.cos(obj.rotation), np.sin(obj.rotation)
    # local = R(-rot) * world (rotation about y)
    lox, loz = cr * ox - sr * oz, sr * ox + cr * oz
    ldx, ldz = cr * dx - sr * dz, sr * dx + cr * dz
    lo = np.array([lox, oy - hy, loz])
    ld = np.stack([ldx, dy, ldz], axis=1)
    half = np.array([hx, hy, hz])
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / ld
        ta = (-half - lo) * inv
        tb = (half - lo) * inv
    tmin = np.where(np.isnan(ta), -np.inf, np.minimum(ta, tb))
    tmax = np.where(np.isnan(tb), np.inf, np.maximum(ta, tb))
    t_near = tmin.max(axis=1)
    t_far = tmax.min(axis=1)
    hit = (t_near <= t_far) & (t_near > 1e-6)
    t = np.where(hit, t_near, np.inf)
    axis = tmin.argmax(axis=1)
    sign = -np.sign(ld[np.arange(len(ld)), axis])
    n_local = np.zeros_like(ld)
    n_local[np.arange(len(ld)), axis] = sign
    nx = cr * n_local[:, 0] + sr * n_local[:, 2]
    nz = -sr * n_local[:, 0] + cr * n_local[:, 2]
    return t, np.stack([nx, n_local[:, 1], nz], axis=1)


def _texture(tex: Texture, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if tex.kind == "checker":
        m = (np.floor(u / tex.scale) + np.floor(v / tex.scale)) % 2
    elif tex.kind == "stripes":
        m = np.floor((u + v) / tex.scale) % 2
    else:  # smooth value noise from a periodic grid, bilinear
        g = tex.noise_grid
        size = g.shape[0]
        gu, gv = u / tex.scale, v / tex.scale
        i0, j0 = np.floor(gu).astype(int), np.floor(gv).astype(int)
        fu, fv = gu - i0, gv - j0
        i0, j0 = i0 % size, j0 % size
        i1, j1 = (i0 + 1) % size, (j0 + 1) % size
        m = (g[i0, j0] * (1 - fu) * (1 - fv) + g[i1, j0] * fu * (1 - fv)
             + g[i0, j1] * (1 - fu) * fv + g[i1, j1] * fu * fv)
    m = m[..., None]
    return tex.color_a * (1 - m) + tex.color_b * m


def render(scene: Scene, camera: Camera, height: int, width: int) -> Render:
    origin = np.asarray(camera.position, dtype=np.float64)
    d = camera.rays(height, width)
    n_rays = d.shape[0]
    dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]

    # Room surfaces: floor, ceiling, 4 walls. Camera is inside, so each ray hits one.
    with np.errstate(divide="ignore", invalid="ignore"):
        planes = [
            ((0.0 - origin[1]) / dy, SEG_FLOOR, np.array([0.0, 1.0, 0.0])),
            ((scene.height - origin[1]) / dy, SEG_BACKGROUND, np.array([0.0, -1.0, 0.0])),
            ((scene.half_x - origin[0]) / dx, SEG_WALL, np.array([-1.0, 0.0, 0.0])),
            ((-scene.half_x - origin[0]) / dx, SEG_WALL, np.array([1.0, 0.0, 0.0])),
            ((scene.half_z - origin[2]) / dz, SEG_WALL, np.array([0.0, 0.0, -1.0])),
            ((-scene.half_z - origin[2]) / dz, SEG_WALL, np.array([0.0, 0.0, 1.0])),
        ]
    t_best = np.full(n_rays, np.inf)
    seg = np.zeros(n_rays, dtype=np.uint8)
    normal = np.zeros((n_rays, 3))
    wall_axis = np.zeros(n_rays, dtype=np.int8)  # 0: x-wall (use z), 1: z-wall (use x)
    for i, (t, sid, nrm) in enumerate(planes):
        t = np.where(np.isfinite(t) & (t > 1e-6), t, np.inf)
        closer = t < t_best
        t_best = np.where(closer, t, t_best)
        seg = np.where(closer, sid, seg)
        normal[closer] = nrm
        if i >= 2:
            wall_axis = np.where(closer, 0 if i < 4 else 1, wall_axis)

    obj_id = np.full(n_rays, -1, dtype=np.int16)
    for k, obj in enumerate(scene.objects):
        t, n = intersect_object(obj, origin, d)
        closer = t < t_best
        t_best = np.where(closer, t, t_best)
        seg = np.where(closer, SEG_FIRST_SHAPE + int(obj.shape), seg)
        obj_id = np.where(closer, k, obj_id)
        normal[closer] = n[closer]

    p = origin + t_best[:, None] * d
    albedo = np.empty((n_rays, 3))
    floor = seg == SEG_FLOOR
    albedo[floor] = _texture(scene.floor_tex, p[floor, 0], p[floor, 2])
    wall = seg == SEG_WALL
    wu = np.where(wall_axis[wall] == 0, p[wall, 2], p[wall, 0])
    albedo[wall] = _texture(scene.wall_tex, wu, p[wall, 1])
    albedo[seg == SEG_BACKGROUND] = scene.ceiling_color
    for k, obj in enumerate(scene.objects):
        albedo[obj_id == k] = obj.color
    lambert = np.clip(normal @ scene.light_dir, 0.0, None)
    shade = scene.ambient + (1.0 - scene.ambient) * lambert
    rgb = np.clip(albedo * shade[:, None], 0.0, 1.0)
    image = np.round(rgb * 255.0).astype(np.uint8).reshape(height, width, 3)
    return Render(
        image=image,
        depth=t_best.reshape(height, width).astype(np.float32),
        seg=seg.reshape(height, width),
        object_id=obj_id.reshape(height, width),
        points=p.reshape(height, width, 3),
    )


def flow_between(points: np.ndarray, cam1: Camera, cam2: Camera) -> tuple[np.ndarray, np.ndarray]:
    """Optical flow (H, W, 2) of a static scene from frame 1 to frame 2, and validity.

    Each pixel's 3D hit point (from frame 1's render) is re-projected into camera 2;
    flow = projected position - pixel centre. Valid where the point lies in front of camera 2
    (occluded pixels keep their geometric flow, as KITTI's ``flow_occ`` does).
    """
    h, w, _ = points.shape
    p2, z2 = cam2.project(points.reshape(-1, 3), h, w)
    xs, ys = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    p1 = np.stack([xs, ys], axis=-1).reshape(-1, 2)
    valid = z2 > 1e-3
    flow = np.where(valid[:, None], p2 - p1, 0.0)
    return flow.reshape(h, w, 2).astype(np.float32), valid.reshape(h, w)
