"""The synthetic world: determinism, and ground truth against independent geometry."""

import numpy as np
import pytest

from tasks.synthetic import store, world
from tasks.synthetic.render import (
    SEG_FIRST_SHAPE,
    SEG_FLOOR,
    SEG_WALL,
    Camera,
    Obj,
    Scene,
    Shape,
    Texture,
    flow_between,
    render,
)


def plain_scene(objects=(), half=5.0, height=3.0):
    tex = Texture("checker", np.array([0.2, 0.2, 0.2]), np.array([0.8, 0.8, 0.8]), 0.5)
    return Scene(half_x=half, half_z=half, height=height, floor_tex=tex, wall_tex=tex,
                 ceiling_color=np.array([0.9, 0.9, 0.9]), light_dir=np.array([0.0, 1.0, 0.0]), ambient=0.3,
                 objects=list(objects))


@pytest.mark.parametrize("kind", ["single", "pairs", "clips"])
def test_generation_is_byte_identical(kind):
    a = store.generate(kind, "train", 3, 32, seed=7)
    b = store.generate(kind, "train", 3, 32, seed=7)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k
    c = store.generate(kind, "train", 3, 32, seed=8)
    assert any(a[k].tobytes() != c[k].tobytes() for k in a)


def test_prefix_stable_and_splits_disjoint():
    first = store.generate("single", "train", 2, 32)
    more = store.generate("single", "train", 4, 32)
    assert np.array_equal(first["image"], more["image"][:2])
    val = store.generate("single", "val", 4, 32)
    flat = {img.tobytes() for img in more["image"]}
    assert not any(img.tobytes() in flat for img in val["image"])


def test_stored_split_reused_by_prefix(tmp_path):
    p1 = store.ensure_split("single", "test", 6, 32, root=tmp_path)
    p2 = store.ensure_split("single", "test", 4, 32, root=tmp_path)
    assert p1 == p2  # the 6-sample file serves a 4-sample request
    arr = store.load_split("single", "test", 4, 32, root=tmp_path)
    assert arr["image"].shape == (4, 32, 32, 3)
    assert np.array_equal(arr["image"], store.generate("single", "test", 4, 32)["image"])
    assert not list(tmp_path.glob("*.tmp"))


def test_depth_of_hand_placed_sphere_and_floor():
    r = 0.5
    sphere = Obj(Shape.SPHERE, center=np.array([0.0, 3.0]), size=np.array([r]), color=np.array([1.0, 0, 0]))
    cam = Camera(position=np.array([0.0, r, 0.0]), yaw=0.0, pitch=0.0)  # eye at the sphere centre height
    out = render(plain_scene([sphere]), cam, 64, 64)
    # The ray through the image centre hits the sphere's front at z = 3 - r (depth along the axis).
    centre = out.depth[31:33, 31:33]
    assert np.allclose(centre, 3.0 - r, atol=2e-3)
    assert (out.seg[31:33, 31:33] == SEG_FIRST_SHAPE + Shape.SPHERE).all()
    # Any floor pixel: depth = h / (-y_c), with y_c the pixel's normalised image coordinate.
    f = cam.focal(64)
    rows, cols = np.nonzero(out.seg == SEG_FLOOR)
    yc = -((rows + 0.5) - 32) / f
    assert np.allclose(out.depth[rows, cols], r / -yc, rtol=1e-6)
    # The wall straight ahead (z = +5) from the first row that shows it.
    wall_rows = np.nonzero(out.seg[:, 0] == SEG_WALL)[0]
    assert np.allclose(out.depth[wall_rows, 0], 5.0, rtol=1e-6)


def test_depth_of_box_face_and_cylinder_top():
    box = Obj(Shape.BOX, center=np.array([0.0, 2.0]), size=np.array([0.5, 1.5, 0.5]), color=np.ones(3), rotation=0.0)
    cam = Camera(position=np.array([0.0, 1.0, 0.0]), yaw=0.0, pitch=0.0)
    out = render(plain_scene([box]), cam, 32, 32)
    assert np.allclose(out.depth[15:17, 15:17], 1.5, atol=1e-6)  # front face at z = 2 - 0.5
    cyl = Obj(Shape.CYLINDER, center=np.array([0.0, 0.0]), size=np.array([0.4, 0.5]), color=np.ones(3))
    top = Camera(position=np.array([0.0, 2.0, -1e-3]), yaw=0.0, pitch=-np.pi / 2 + 1e-6)  # looking straight down
    out = render(plain_scene([cyl]), top, 32, 32)
    assert np.allclose(out.depth[15:17, 15:17], 1.5, atol=1e-3)  # top cap at y = 0.5, camera at 2.0


def _pixel_grid(h, w):
    xs, ys = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    return np.stack([xs, ys, np.ones_like(xs)], axis=-1)


def test_flow_of_pure_rotation_is_the_homography():
    scene = plain_scene([Obj(Shape.CONE, np.array([0.5, 2.5]), np.array([0.3, 0.8]), np.ones(3))])
    cam1 = Camera(position=np.array([0.0, 1.2, 0.0]), yaw=0.3, pitch=-0.2)
    cam2 = Camera(position=cam1.position.copy(), yaw=0.3 + np.deg2rad(12), pitch=-0.2 + np.deg2rad(4))
    h = w = 48
    r1 = render(scene, cam1, h, w)
    flow, valid = flow_between(r1.points, cam1, cam2)
    # Independent formula: x2 ~ K R2^T R1 K^-1 x1 for a camera that only rotates (depth drops out).
    k = cam1.intrinsics(h, w)
    flip = np.diag([1.0, -1.0, 1.0])  # image y grows downwards, camera "up" upwards
    r_1 = np.stack(cam1.axes(), axis=1) @ flip
    r_2 = np.stack(cam2.axes(), axis=1) @ flip
    hom = k @ r_2.T @ r_1 @ np.linalg.inv(k)
    x1 = _pixel_grid(h, w).reshape(-1, 3)
    x2 = x1 @ hom.T
    expected = (x2[:, :2] / x2[:, 2:]) - x1[:, :2]
    assert valid.all()
    np.testing.assert_allclose(flow.reshape(-1, 2), expected, atol=2e-3)


def test_flow_of_forward_motion_towards_a_wall():
    scene = plain_scene(half=4.0)
    cam1 = Camera(position=np.array([0.0, 1.5, 0.0]), yaw=0.0, pitch=0.0)
    cam2 = Camera(position=np.array([0.0, 1.5, 1.0]), yaw=0.0, pitch=0.0)
    r1 = render(scene, cam1, 32, 32)
    flow, _ = flow_between(r1.points, cam1, cam2)
    rows, cols = np.nonzero(r1.seg == SEG_WALL)
    front = np.abs(r1.points[rows, cols, 2] - 4.0) < 1e-9  # the wall the camera moves towards
    z = 4.0
    cx = 16.0
    expected_u = ((cols[front] + 0.5) - cx) * (z / (z - 1.0) - 1.0)  # expansion about the centre
    np.testing.assert_allclose(flow[rows[front], cols[front], 0], expected_u, atol=1e-4)


@pytest.mark.parametrize("action,axis,sign", [
    ("rotate_left", 0, +1), ("rotate_right", 0, -1), ("look_up", 1, +1), ("look_down", 1, -1),
])
def test_egomotion_label_matches_image_motion(action, axis, sign):
    """Turning left moves the scene right in the image; looking up moves it down."""
    rng = np.random.default_rng(0)
    scene, cam = world.sample_scene(rng)
    cam2 = world.apply_action(cam, world.EGOMOTION_ACTIONS.index(action), rng)
    r1 = render(scene, cam, 32, 32)
    flow, valid = flow_between(r1.points, cam, cam2)
    assert np.sign(np.median(flow[valid][:, axis])) == sign
    assert np.allclose(cam2.position, cam.position)


def test_move_ahead_translates_along_the_view_direction():
    rng = np.random.default_rng(1)
    _, cam = world.sample_scene(rng)
    cam2 = world.apply_action(cam, world.EGOMOTION_ACTIONS.index("move_ahead"), rng)
    step = cam2.position - cam.position
    fwd = np.array([np.sin(cam.yaw), 0.0, np.cos(cam.yaw)])
    assert 0.2 <= step @ fwd <= 0.4 and np.allclose(np.cross(step, fwd), 0.0, atol=1e-12)
    assert (cam2.yaw, cam2.pitch) == (cam.yaw, cam.pitch)


def test_pair_sample_labels_and_flow_are_consistent():
    for i in range(6):
        s = world.make_pair(world.sample_rng(3, "pairs", "train", i), 32)
        assert s.frames.shape == (2, 32, 32, 3) and 0 <= s.action < len(world.EGOMOTION_ACTIONS)
        mag = np.linalg.norm(s.flow[s.flow_valid.astype(bool)], axis=-1)
        assert np.median(mag) > 0.1  # every action moves the image


def test_free_steps_against_hand_placed_blocker():
    cam = Camera(position=np.array([0.0, 1.0, 0.0]), yaw=0.0, pitch=-0.3)
    for steps in range(world.MAX_STEPS):
        r = 0.3
        # Step `steps` is free (gap 0.1 m), step `steps + 1` overlaps the blocker.
        d = world.AGENT_RADIUS + r + steps * world.STEP + 0.1
        blocker = Obj(Shape.SPHERE, np.array([0.0, d]), np.array([r]), np.ones(3))
        assert world.free_steps(plain_scene([blocker]), cam) == steps
    assert world.free_steps(plain_scene([]), cam) == world.MAX_STEPS
    near_wall = Camera(position=np.array([0.0, 1.0, 5.0 - world.AGENT_RADIUS - 0.3]), yaw=0.0, pitch=0.0)
    assert world.free_steps(plain_scene([]), near_wall) == 1


def test_single_sample_ground_truths_agree():
    for i in range(8):
        s = world.make_single(world.sample_rng(5, "single", "train", i), 48)
        assert s.image.shape == (48, 48, 3) and s.image.dtype == np.uint8
        assert 1 <= s.count <= world.MAX_OBJECTS
        shapes_seen = set(np.unique(s.seg[s.seg >= SEG_FIRST_SHAPE]) - SEG_FIRST_SHAPE)
        assert s.shape_cls in shapes_seen
        assert ((s.walkable == 1) <= (s.seg == SEG_FLOOR)).all()  # walkable is visible floor only
        assert (s.depth > 0).all() and np.isfinite(s.depth).all()
        assert 0 <= s.num_steps <= world.MAX_STEPS


def test_clip_motion_is_visible_and_ordered():
    s = world.make_clip(world.sample_rng(0, "clips", "train", 2), 32)
    assert s.frames.shape == (world.CLIP_FRAMES, 32, 32, 3)
    assert 0 <= s.action < len(world.ACTION_CLASSES)
    assert any((s.frames[0] != f).any() for f in s.frames[1:])  # something moves
