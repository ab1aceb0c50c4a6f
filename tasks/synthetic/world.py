"""Scene sampling and ground truth for the synthetic suite.

Every sample is generated from its own seed ``(base_seed, kind, split, index)``, so a split
is a deterministic sequence, its first N samples do not depend on how many are generated,
and splits are disjoint by construction (different seed streams).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .render import SEG_FLOOR, Camera, Obj, Scene, Shape, Texture, flow_between, render

STEP = 0.25  # metres per forward step (THOR's grid size)
MAX_STEPS = 4
AGENT_RADIUS = 0.15
WALKABLE_MARGIN = 0.15  # floor closer than this to an object footprint is not walkable
MAX_OBJECTS = 6
MIN_VISIBLE_FRACTION = 0.002  # an object counts as visible above this share of pixels

EGOMOTION_ACTIONS = ("move_ahead", "rotate_left", "rotate_right", "look_up", "look_down")
ACTION_CLASSES = ("move_left", "move_right", "move_toward", "move_away", "jump")
CLIP_FRAMES = 6

KINDS = ("single", "pairs", "clips")
SPLITS = ("train", "val", "test")


def sample_rng(base_seed: int, kind: str, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([base_seed, KINDS.index(kind), SPLITS.index(split), index])


def _random_color(rng: np.random.Generator, lo: float = 0.15, hi: float = 0.95) -> np.ndarray:
    return rng.uniform(lo, hi, size=3)


def _random_texture(rng: np.random.Generator) -> Texture:
    kind = ("checker", "stripes", "noise")[rng.integers(3)]
    a, b = _random_color(rng, 0.2, 0.9), _random_color(rng, 0.2, 0.9)
    scale = float(rng.uniform(0.2, 0.8)) if kind != "noise" else float(rng.uniform(0.15, 0.5))
    grid = rng.uniform(0.0, 1.0, size=(16, 16)) if kind == "noise" else None
    return Texture(kind=kind, color_a=a, color_b=b, scale=scale, noise_grid=grid)


def _random_object(rng: np.random.Generator, shape: Shape, center: np.ndarray) -> Obj:
    if shape == Shape.SPHERE:
        size = np.array([rng.uniform(0.2, 0.4)])
    elif shape == Shape.BOX:
        size = np.array([rng.uniform(0.15, 0.35), rng.uniform(0.15, 0.4), rng.uniform(0.15, 0.35)])
    elif shape == Shape.CYLINDER:
        size = np.array([rng.uniform(0.15, 0.3), rng.uniform(0.4, 1.0)])
    else:
        size = np.array([rng.uniform(0.2, 0.35), rng.uniform(0.5, 1.0)])
    return Obj(shape=shape, center=center, size=size, color=_random_color(rng),
               rotation=float(rng.uniform(0, np.pi)))


def _base_scene(rng: np.random.Generator) -> Scene:
    light = np.array([rng.uniform(-0.6, 0.6), 1.0, rng.uniform(-0.6, 0.6)])
    return Scene(
        half_x=float(rng.uniform(3.0, 5.0)),
        half_z=float(rng.uniform(3.0, 5.0)),
        height=float(rng.uniform(2.4, 3.0)),
        floor_tex=_random_texture(rng),
        wall_tex=_random_texture(rng),
        ceiling_color=_random_color(rng, 0.6, 0.95),
        light_dir=light / np.linalg.norm(light),
        ambient=float(rng.uniform(0.25, 0.45)),
    )


def _random_camera(rng: np.random.Generator, scene: Scene) -> Camera:
    pos = np.array([
        rng.uniform(-scene.half_x + 1.0, scene.half_x - 1.0),
        rng.uniform(0.9, 1.3),
        rng.uniform(-scene.half_z + 1.0, scene.half_z - 1.0),
    ])
    return Camera(position=pos, yaw=float(rng.uniform(-np.pi, np.pi)),
                  pitch=float(np.deg2rad(rng.uniform(-40.0, -15.0))))


def _forward_xz(cam: Camera) -> np.ndarray:
    return np.array([np.sin(cam.yaw), np.cos(cam.yaw)])


def free_steps(scene: Scene, cam: Camera) -> int:
    """Forward steps of STEP metres the agent (a disc of AGENT_RADIUS) can take, 0..MAX_STEPS."""
    fwd = _forward_xz(cam)
    start = cam.position[[0, 2]]
    for j in range(1, MAX_STEPS + 1):
        p = start + j * STEP * fwd
        if abs(p[0]) > scene.half_x - AGENT_RADIUS or abs(p[1]) > scene.half_z - AGENT_RADIUS:
            return j - 1
        for obj in scene.objects:
            if np.linalg.norm(p - obj.center) < AGENT_RADIUS + obj.footprint_radius:
                return j - 1
    return MAX_STEPS


def _fits(scene: Scene, center: np.ndarray, radius: float, cam: Camera) -> bool:
    if abs(center[0]) > scene.half_x - radius - 0.05 or abs(center[1]) > scene.half_z - radius - 0.05:
        return False
    if np.linalg.norm(center - cam.position[[0, 2]]) < radius + AGENT_RADIUS + 0.05:
        return False
    return all(np.linalg.norm(center - o.center) > radius + o.footprint_radius + 0.05 for o in scene.objects)


def _in_corridor(center: np.ndarray, radius: float, cam: Camera, steps: int) -> bool:
    fwd = _forward_xz(cam)
    start = cam.position[[0, 2]]
    return any(np.linalg.norm(start + j * STEP * fwd - center) < AGENT_RADIUS + radius + 0.02
               for j in range(1, steps + 1))


def sample_scene(rng: np.random.Generator) -> tuple[Scene, Camera]:
    """A room, a camera and 1..MAX_OBJECTS objects in front of it.

    A target number of free steps is drawn first and, when below MAX_STEPS, an object is
    placed straight ahead to block the next step: this balances the num-steps labels.
    The labels themselves are always measured from the final geometry.
    """
    scene = _base_scene(rng)
    cam = _random_camera(rng, scene)
    target_steps = int(rng.integers(0, MAX_STEPS + 1))
    n_objects = int(rng.integers(1, MAX_OBJECTS + 1))
    fwd = _forward_xz(cam)
    lateral = np.array([fwd[1], -fwd[0]])
    half_fov = cam.fov_x / 2 - np.deg2rad(5)
    for k in range(n_objects):
        shape = Shape(int(rng.integers(len(Shape))))
        for _attempt in range(30):
            if k == 0 and target_steps < MAX_STEPS:
                obj = _random_object(rng, shape, np.zeros(2))
                dist = AGENT_RADIUS + obj.footprint_radius + target_steps * STEP + rng.uniform(0.02, STEP - 0.02)
                center = cam.position[[0, 2]] + dist * fwd + rng.uniform(-0.05, 0.05) * lateral
            else:
                ang = rng.uniform(-half_fov, half_fov)
                dist = rng.uniform(1.2, 5.0)
                dir_xz = np.cos(ang) * fwd + np.sin(ang) * lateral
                obj = _random_object(rng, shape, np.zeros(2))
                center = cam.position[[0, 2]] + dist * dir_xz
                if _in_corridor(center, obj.footprint_radius, cam, min(target_steps + 1, MAX_STEPS)):
                    continue
            obj.center = center
            if _fits(scene, center, obj.footprint_radius, cam):
                scene.objects.append(obj)
                break
    return scene, cam


@dataclass
class SingleSample:
    image: np.ndarray  # (H, W, 3) uint8
    shape_cls: int
    count: int  # visible objects, >= 1
    num_steps: int
    seg: np.ndarray  # (H, W) uint8
    walkable: np.ndarray  # (H, W) uint8
    depth: np.ndarray  # (H, W) float32


def visible_objects(object_id: np.ndarray, n_objects: int) -> np.ndarray:
    counts = np.bincount(object_id[object_id >= 0].ravel(), minlength=n_objects)
    return counts


def walkable_mask(scene: Scene, points: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Visible floor farther than WALKABLE_MARGIN from every object footprint."""
    mask = seg == SEG_FLOOR
    xz = points[..., [0, 2]]
    for obj in scene.objects:
        dist = np.linalg.norm(xz - obj.center, axis=-1)
        mask &= dist > obj.footprint_radius + WALKABLE_MARGIN
    return mask.astype(np.uint8)


def make_single(rng: np.random.Generator, size: int) -> SingleSample:
    min_px = max(3, int(MIN_VISIBLE_FRACTION * size * size))
    for _ in range(50):
        scene, cam = sample_scene(rng)
        r = render(scene, cam, size, size)
        vis = visible_objects(r.object_id, len(scene.objects))
        if (vis >= min_px).any():
            break
    else:  # pragma: no cover - 50 failures in a row do not happen with these ranges
        raise RuntimeError("could not sample a scene with a visible object")
    largest = int(vis.argmax())
    noise = rng.normal(0.0, 3.0, size=r.image.shape)
    image = np.clip(r.image.astype(np.float64) + noise, 0, 255).round().astype(np.uint8)
    return SingleSample(
        image=image,
        shape_cls=int(scene.objects[largest].shape),
        count=int((vis >= min_px).sum()),
        num_steps=free_steps(scene, cam),
        seg=r.seg,
        walkable=walkable_mask(scene, r.points, r.seg),
        depth=r.depth,
    )


def apply_action(cam: Camera, action: int, rng: np.random.Generator) -> Camera:
    """The camera after one egomotion action, with a jittered magnitude."""
    pos, yaw, pitch = cam.position.copy(), cam.yaw, cam.pitch
    name = EGOMOTION_ACTIONS[action]
    turn = np.deg2rad(rng.uniform(10.0, 20.0))
    if name == "move_ahead":
        pos[[0, 2]] += rng.uniform(0.2, 0.4) * _forward_xz(cam)
    elif name == "rotate_left":
        yaw -= turn  # "right" is +x at yaw 0; turning left decreases yaw
    elif name == "rotate_right":
        yaw += turn
    elif name == "look_up":
        pitch += turn
    else:
        pitch -= turn
    return Camera(position=pos, yaw=yaw, pitch=pitch, fov_x=cam.fov_x)


@dataclass
class PairSample:
    frames: np.ndarray  # (2, H, W, 3) uint8
    action: int
    flow: np.ndarray  # (H, W, 2) float32, frame 0 -> frame 1, pixels
    flow_valid: np.ndarray  # (H, W) uint8
    depth: np.ndarray  # (H, W) float32, frame 0


def make_pair(rng: np.random.Generator, size: int) -> PairSample:
    scene, cam = sample_scene(rng)
    action = int(rng.integers(len(EGOMOTION_ACTIONS)))
    cam2 = apply_action(cam, action, rng)
    r1 = render(scene, cam, size, size)
    r2 = render(scene, cam2, size, size)
    flow, valid = flow_between(r1.points, cam, cam2)
    return PairSample(frames=np.stack([r1.image, r2.image]), action=action, flow=flow,
                      flow_valid=valid.astype(np.uint8), depth=r1.depth)


@dataclass
class ClipSample:
    frames: np.ndarray  # (CLIP_FRAMES, H, W, 3) uint8
    action: int


def make_clip(rng: np.random.Generator, size: int) -> ClipSample:
    """A static camera; one object moves in one of ACTION_CLASSES ways over the clip."""
    scene, cam = sample_scene(rng)
    while not scene.objects:  # placement can fail for every object; a clip needs one to move
        scene, cam = sample_scene(rng)
    action = int(rng.integers(len(ACTION_CLASSES)))
    mover = scene.objects[int(rng.integers(len(scene.objects)))]
    fwd = _forward_xz(cam)
    lateral = np.array([fwd[1], -fwd[0]])  # camera right on the floor
    speed = rng.uniform(0.08, 0.15)
    start = mover.center.copy()
    frames = []
    for f in range(CLIP_FRAMES):
        name = ACTION_CLASSES[action]
        lift = 0.0
        if name == "move_left":
            mover.center = start - f * speed * lateral
        elif name == "move_right":
            mover.center = start + f * speed * lateral
        elif name == "move_toward":
            mover.center = start - f * speed * fwd
        elif name == "move_away":
            mover.center = start + f * speed * fwd
        else:
            lift = 0.5 * np.sin(np.pi * f / (CLIP_FRAMES - 1))
        frames.append(_render_lifted(scene, cam, mover, lift, size))
    return ClipSample(frames=np.stack(frames), action=action)


def _render_lifted(scene: Scene, cam: Camera, mover: Obj, lift: float, size: int) -> np.ndarray:
    """Render with ``mover`` raised by ``lift`` metres (objects rest on the floor otherwise)."""
    if lift == 0.0:
        return render(scene, cam, size, size).image
    # Raising an object by `lift` equals lowering the world around it: render the mover
    # separately from a camera lowered by `lift` and composite by depth.
    others = Scene(**{**scene.__dict__, "objects": [o for o in scene.objects if o is not mover]})
    alone = Scene(**{**scene.__dict__, "objects": [mover]})
    r_others = render(others, cam, size, size)
    low = Camera(position=cam.position - np.array([0.0, lift, 0.0]), yaw=cam.yaw, pitch=cam.pitch, fov_x=cam.fov_x)
    r_alone = render(alone, low, size, size)
    use = (r_alone.object_id >= 0) & (r_alone.depth < r_others.depth)
    return np.where(use[..., None], r_alone.image, r_others.image)


def make_sample(kind: str, rng: np.random.Generator, size: int):
    return {"single": make_single, "pairs": make_pair, "clips": make_clip}[kind](rng, size)
