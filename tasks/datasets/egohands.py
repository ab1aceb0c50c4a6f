"""EgoHands hand segmentation: ``egohands_data/_LABELLED_SAMPLES/<VIDEO>/``, as released.

Each of the 48 videos holds 100 labelled frames ``frame_NNNN.jpg`` (NNNN = the frame's number
in the video, not 1..100) and one ``polygons.mat`` (MATLAB v5): a 1 x 100 struct array
``polygons``, one element per labelled frame in frame order, with fields ``myleft``,
``myright``, ``yourleft``, ``yourright``, each an (n, 2) array of (x, y) vertices in MATLAB's
1-based pixel coordinates, or empty when that hand is not in view. Frame k (in frame-number
order) is paired with element k; a video whose frame count differs from its element count is
a problem naming its ``polygons.mat``, not a silent shift.

Masks: the polygons are rasterised once into 5-class maps (0 background, 1 my left, 2 my
right, 3 your left, 4 your right) and stored in the harness cache,
``<cache>/egohands/<VIDEO>_<sha256 of polygons.mat>_<H>x<W>_v<version>.npz``, one compressed
array per frame, written atomically. A changed ``polygons.mat`` has another hash, so its masks are rebuilt
(and the stale file removed); the user's folder is never written. Where two hands' polygons
overlap, the camera wearer's hands win: they are nearer the camera, so they occlude the
partner's (draw order your left, your right, my left, my right; the later one is kept).

Split: the "Main Split" of the EgoHands paper (Bambach et al., ICCV 2015), which the
release's ``getMetaBy.m`` encodes as a 0/1 index over the videos of ``metadata.mat``: 36
train, 4 validation and 8 test videos (3,600 / 400 / 800 frames), balanced over actors,
activities and locations, and never splitting a video. The index is applied here to the 48
video names in sorted order, taken to be the order of ``metadata.mat`` (not read here); that
reading gives every activity 2 test and 1 validation video and every camera wearer 2 test
videos, the balance the paper describes. The resulting names are listed below. The paper's
4,800 is the size of the whole release (the reference split sorted frames 90/10, which cut
one video in two).

Training uses random 513 x 513 crops, as the paper; no flip (a mirrored left hand looks like
a right hand, but would keep its "left" label) and no random scale (neither paper nor
reference used one). Evaluation is at the full 720 x 1280.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from harness.common.atomic import atomic_path
from harness.common.errors import HarnessError
from harness.common.paths import cache_root

from ..registry import register_task
from ..spec import DataLayout, DataRequest, SplitSpec, TaskSpec, TransformSpec
from .base import Problems, list_dirs, list_files, list_names, require, task_folder
from .pixelwise import PixelSplit, class_map_sample

FOLDER = "egohands_data"
SAMPLES = "_LABELLED_SAMPLES"
HANDS: tuple[str, ...] = ("myleft", "myright", "yourleft", "yourright")  # class = position + 1
CLASS_NAMES: tuple[str, ...] = ("background", "my left", "my right", "your left", "your right")
DRAW_ORDER: tuple[str, ...] = ("yourleft", "yourright", "myleft", "myright")  # later wins on overlap
CACHE_VERSION = 1  # bump when the rasterisation changes

# getMetaBy.m's MainSplit index applied to the sorted video names (1-based positions: test 1, 11, 13, 20,
# 31, 34, 38, 44; validation 7, 14, 28, 47; train the other 36).
TEST_VIDEOS = frozenset({
    "CARDS_COURTYARD_B_T", "CARDS_OFFICE_S_B", "CHESS_COURTYARD_B_T", "CHESS_LIVINGROOM_T_H",
    "JENGA_LIVINGROOM_S_T", "JENGA_OFFICE_H_T", "PUZZLE_COURTYARD_H_T", "PUZZLE_LIVINGROOM_T_B",
})
VAL_VIDEOS = frozenset({"CARDS_LIVINGROOM_S_H", "CHESS_COURTYARD_H_S", "JENGA_COURTYARD_T_S", "PUZZLE_OFFICE_S_T"})
TRAIN_VIDEOS = frozenset({
    "CARDS_COURTYARD_H_S", "CARDS_COURTYARD_S_H", "CARDS_COURTYARD_T_B", "CARDS_LIVINGROOM_B_T",
    "CARDS_LIVINGROOM_H_S", "CARDS_LIVINGROOM_T_B", "CARDS_OFFICE_B_S", "CARDS_OFFICE_H_T", "CARDS_OFFICE_T_H",
    "CHESS_COURTYARD_S_H", "CHESS_COURTYARD_T_B", "CHESS_LIVINGROOM_B_S", "CHESS_LIVINGROOM_H_T",
    "CHESS_LIVINGROOM_S_B", "CHESS_OFFICE_B_S", "CHESS_OFFICE_H_T", "CHESS_OFFICE_S_B", "CHESS_OFFICE_T_H",
    "JENGA_COURTYARD_B_H", "JENGA_COURTYARD_H_B", "JENGA_COURTYARD_S_T", "JENGA_LIVINGROOM_B_H",
    "JENGA_LIVINGROOM_H_B", "JENGA_LIVINGROOM_T_S", "JENGA_OFFICE_B_S", "JENGA_OFFICE_S_B", "JENGA_OFFICE_T_H",
    "PUZZLE_COURTYARD_B_S", "PUZZLE_COURTYARD_S_B", "PUZZLE_COURTYARD_T_H", "PUZZLE_LIVINGROOM_B_T",
    "PUZZLE_LIVINGROOM_H_S", "PUZZLE_LIVINGROOM_S_H", "PUZZLE_OFFICE_B_H", "PUZZLE_OFFICE_H_B", "PUZZLE_OFFICE_T_S",
})
SPLIT_VIDEOS = {"train": TRAIN_VIDEOS, "val": VAL_VIDEOS, "test": TEST_VIDEOS}

LAYOUT = DataLayout(
    folder=FOLDER,
    tree="""egohands_data/
  _LABELLED_SAMPLES/<VIDEO>/frame_NNNN.jpg   (48 videos, e.g. CARDS_COURTYARD_B_T; 100 labelled frames each, 720 x 1280)
  _LABELLED_SAMPLES/<VIDEO>/polygons.mat     (struct array polygons: myleft, myright, yourleft, yourright)
  (egohands_data.zip extracted; metadata.mat and the MATLAB helpers beside it are not read)""",
    url="http://vision.soic.indiana.edu/projects/egohands/ (egohands_data.zip, 'Labelled data')",
    counts={"train": 3_600, "val": 400, "test": 800},
    notes="the ICCV 2015 Main Split by video (36 / 4 / 8); masks rasterised once into the harness cache",
)


# ------------------------------------------------------------------------------------------- polygons

def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_polygons(path: Path) -> list[dict[str, np.ndarray]]:
    """One {hand: (n, 2) float (x, y), 1-based} per labelled frame, in frame order; empty hands left out."""
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
    except Exception as exc:  # scipy raises ValueError, TypeError, MatReadError, NotImplementedError (v7.3)
        why = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise HarnessError(f"{path}: not a readable MATLAB v5 .mat ({why})") from None
    if "polygons" not in mat:
        has = ", ".join(k for k in mat if not k.startswith("__"))
        raise HarnessError(f"{path}: no 'polygons' variable (has {has or 'none'})")
    structs = mat["polygons"]
    fields = structs.dtype.names or ()
    if set(HANDS) - set(fields):
        raise HarnessError(f"{path}: polygons has fields {list(fields)}, expected {list(HANDS)}")
    frames = []
    for element in structs.reshape(-1):
        hands = {}
        for hand in HANDS:
            pts = np.asarray(element[hand], dtype=np.float64)
            if pts.size:
                if pts.ndim != 2 or pts.shape[1] != 2:
                    raise HarnessError(f"{path}: a {hand} polygon of shape {pts.shape}, expected (n, 2) x, y")
                if not np.isfinite(pts).all():
                    bad = pts[~np.isfinite(pts)][0]
                    raise HarnessError(f"{path}: frame {len(frames) + 1}'s {hand} polygon has a vertex coordinate "
                                       f"{bad}; the release's vertices are pixel coordinates")
                hands[hand] = pts
        frames.append(hands)
    return frames


def rasterise(hands: dict[str, np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """One frame's polygons -> (H, W) uint8 class map (``DRAW_ORDER``: later hands win on overlap)."""
    img = Image.new("L", (size[1], size[0]), 0)
    draw = ImageDraw.Draw(img)
    for hand in DRAW_ORDER:
        pts = hands.get(hand)
        if pts is not None and len(pts) >= 3:
            draw.polygon([(float(x) - 1.0, float(y) - 1.0) for x, y in pts], fill=HANDS.index(hand) + 1)
    return np.asarray(img, dtype=np.uint8)


def mask_cache_dir() -> Path:
    return cache_root() / "egohands"


def video_masks(video_dir: Path, frame_size: tuple[int, int]) -> Path:
    """The cached masks of one video, rasterised from its ``polygons.mat`` on the first read; keyed by
    the file's sha256 (an edited file is rasterised again), the frame size and ``CACHE_VERSION``."""
    source = video_dir / "polygons.mat"
    digest = file_sha256(source)
    folder = mask_cache_dir()
    target = folder / f"{video_dir.name}_{digest}_{frame_size[0]}x{frame_size[1]}_v{CACHE_VERSION}.npz"
    if target.is_file():
        return target
    masks = {f"m{k}": rasterise(hands, frame_size) for k, hands in enumerate(read_polygons(source))}
    with atomic_path(target, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **masks)
    for stale in folder.glob(f"{video_dir.name}_*.npz"):
        if stale != target:
            stale.unlink(missing_ok=True)
    return target


def read_mask(cache_file: Path, k: int) -> np.ndarray:
    try:
        with np.load(cache_file) as npz:
            return npz[f"m{k}"]
    except (OSError, KeyError, ValueError) as exc:
        raise HarnessError(f"{cache_file}: unreadable cached masks ({exc}); delete it to rebuild") from None


# -------------------------------------------------------------------------------------------- dataset

class EgoHandsSplit(PixelSplit):
    kind = "class_map"

    def __init__(self, task: TaskSpec, req: DataRequest, items: list[tuple[Path, Path, int]], problems: Problems,
                 first_frames: dict[Path, Path] | None = None):
        super().__init__(task, req, items, problems)  # (frame, cached masks of its video, index in the video)
        self.first_frames = first_frames or {}  # cached masks -> the frame whose size they are drawn at

    def sized_files(self, i: int) -> tuple[Path, ...]:
        """A video's masks are drawn at its first frame's size: every frame must have it."""
        frame, cache_file, _ = self.items[i]
        first = self.first_frames.get(cache_file)
        return (first, frame) if first is not None and first != frame else ()

    def decode_target(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        _, cache_file, k = self.items[i]
        return class_map_sample(read_mask(cache_file, k))


def _frame_number(name: str) -> tuple[int, str]:
    digits = "".join(c for c in Path(name).stem if c.isdigit())
    return (int(digits) if digits else -1, name)


def list_video(video_dir: Path, problems: Problems) -> list[tuple[Path, Path, int]]:
    """(frame, cached masks, k) for the frames of one video, frame k in frame-number order paired with
    polygons element k."""
    frames = sorted(list_files(video_dir, (".jpg",)), key=_frame_number)
    source = video_dir / "polygons.mat"
    if "polygons.mat" not in list_names(video_dir):
        problems.add(source, "missing: the video's polygon annotations")
        return []
    if not frames:
        problems.add(video_dir, "no frame_NNNN.jpg frames")
        return []
    try:
        with Image.open(video_dir / frames[0]) as img:
            size = (img.height, img.width)
        cache_file = video_masks(video_dir, size)
        with np.load(cache_file) as npz:
            n_polygons = sum(1 for name in npz.files if name.startswith("m"))
    except HarnessError as exc:
        problems.add(source, str(exc).removeprefix(f"{source}: "))
        return []
    except OSError as exc:
        problems.add(video_dir / frames[0], f"unreadable frame ({exc})")
        return []
    if n_polygons != len(frames):
        problems.add(source, f"{n_polygons} labelled frames in polygons but {len(frames)} frame_NNNN.jpg files in "
                             f"{video_dir.name}: frames and polygons cannot be paired (a frame deleted or added?)")
        return []
    return [(video_dir / f, cache_file, k) for k, f in enumerate(frames)]


def build(task: TaskSpec, req: DataRequest) -> EgoHandsSplit:
    if req.split not in SPLIT_VIDEOS:
        raise HarnessError(f"task {task.name}: no split {req.split!r} (has {', '.join(SPLIT_VIDEOS)})")
    root = require(task_folder(task, req) / SAMPLES, task.name, "the labelled samples")
    problems = Problems(task.name, req.strict)
    videos = list_dirs(root)
    known = TRAIN_VIDEOS | VAL_VIDEOS | TEST_VIDEOS
    for v in videos:
        if v not in known:
            problems.add(root / v, "not one of the 48 EgoHands videos; the split is by video name, so it has none")
    items = [item for v in videos if v in SPLIT_VIDEOS[req.split] for item in list_video(root / v, problems)]
    problems.raise_if_any()
    first_frames = {cache_file: frame for frame, cache_file, k in items if k == 0}
    return EgoHandsSplit(task, req, items, problems, first_frames)


EGOHANDS_SEG = register_task(TaskSpec(
    name="egohands_seg", paper_name="EgoHands Seg.", output="pixel", nature="semantic", head="deeplabv3plus",
    loss="pixel_ce", metric="miou", dataset=build, num_outputs=len(CLASS_NAMES), class_names=CLASS_NAMES,
    epochs=25, suite="paper", train_size=4_800, splits=SplitSpec("train", "val", "test"),
    train_transform=TransformSpec(crop=(513, 513)), eval_transform=TransformSpec(), layout=LAYOUT,
    description="5 classes (background, my/your left/right hand) rasterised from the release's polygons; ICCV 2015 "
                "Main Split by video (36/4/8); 513 x 513 crops in training, full 720 x 1280 at evaluation; "
                "--resolution R resizes to R x R",
))
