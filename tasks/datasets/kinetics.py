"""Kinetics-400 action prediction from 6 ordered frames: ``kinetics400/annotations`` in the
Kinetics-400 annotation format and the frames extracted from each clip, as the paper's reference
(allenai/ViRB) reads them.

``annotations/{train,validate}.json`` maps each YouTube id to ``{"annotations": {"label": ...,
"segment": [start, end]}, "duration": ..., "subset": ..., "url": ...}``. The frames of clip ``<id>``
are ``{train,validate}/<id[:2]>/<id>_<k>.jpg``, ``k`` = 1, 2, ... (or 0, 1, ...) in temporal order.
The frames are ordered by the NUMBER ``k`` (``_2`` before ``_10``), never by file name; the
reference took the first 6 files the file system listed and sorted their names as strings, which
mixes the order as soon as a clip has 10 frames or more.

Which 6: the paper's release has 6 frames per clip ("50,000 image frames ... at 6 frames per
video"). When a clip has more (e.g. 12), 6 are taken evenly spaced over its frames, the middle of
each sixth: positions floor((2j + 1) n / 12), j = 0..5 (for 12 frames: k = 2, 4, 6, 8, 10, 12; for 6:
all of them), a constant frame rate as the paper used for Kinetics pre-training.

A clip with frames but fewer than 6, or with a gap in its numbering (a deleted frame), is a
problem naming the missing file (a deleted last frame cannot be told from a shorter clip); frames
on disk whose clip is not in the annotation file are a problem too. A clip in the annotation file
with no frames at all was not downloaded or extracted (YouTube videos disappear; the reference
skipped those too): it is left out, and ``data check`` says how many. The 400 classes are the
release's class list (below, sorted as the reference sorted them); a label outside it is a
problem naming the clip (case and ``_`` vs space are not significant).

Splits: train (the paper: 50,000 frames, about 8,333 clips) and the official validate split as the
test split; 10% of train is carved (stratified) for validation.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path

from harness.common.errors import HarnessError

from ..registry import register_task
from ..spec import DataLayout, DataRequest, SplitSpec, TaskSpec
from .base import FileClassification, Problems, class_index, image_task, list_dirs, list_names, require, task_folder

FOLDER = "kinetics400"
SPLITS = ("train", "validate")
FRAMES = 6

# The Kinetics-400 class list (400 labels of the release's annotation files), sorted.
CLASS_NAMES: tuple[str, ...] = (
    "abseiling", "air drumming", "answering questions", "applauding", "applying cream", "archery", "arm wrestling",
    "arranging flowers", "assembling computer", "auctioning", "baby waking up", "baking cookies", "balloon blowing",
    "bandaging", "barbequing", "bartending", "beatboxing", "bee keeping", "belly dancing", "bench pressing",
    "bending back", "bending metal", "biking through snow", "blasting sand", "blowing glass", "blowing leaves",
    "blowing nose", "blowing out candles", "bobsledding", "bookbinding", "bouncing on trampoline", "bowling",
    "braiding hair", "breading or breadcrumbing", "breakdancing", "brush painting", "brushing hair",
    "brushing teeth", "building cabinet", "building shed", "bungee jumping", "busking", "canoeing or kayaking",
    "capoeira", "carrying baby", "cartwheeling", "carving pumpkin", "catching fish",
    "catching or throwing baseball", "catching or throwing frisbee", "catching or throwing softball", "celebrating",
    "changing oil", "changing wheel", "checking tires", "cheerleading", "chopping wood", "clapping",
    "clay pottery making", "clean and jerk", "cleaning floor", "cleaning gutters", "cleaning pool",
    "cleaning shoes", "cleaning toilet", "cleaning windows", "climbing a rope", "climbing ladder", "climbing tree",
    "contact juggling", "cooking chicken", "cooking egg", "cooking on campfire", "cooking sausages",
    "counting money", "country line dancing", "cracking neck", "crawling baby", "crossing river", "crying",
    "curling hair", "cutting nails", "cutting pineapple", "cutting watermelon", "dancing ballet",
    "dancing charleston", "dancing gangnam style", "dancing macarena", "deadlifting",
    "decorating the christmas tree", "digging", "dining", "disc golfing", "diving cliff", "dodgeball",
    "doing aerobics", "doing laundry", "doing nails", "drawing", "dribbling basketball", "drinking",
    "drinking beer", "drinking shots", "driving car", "driving tractor", "drop kicking", "drumming fingers",
    "dunking basketball", "dying hair", "eating burger", "eating cake", "eating carrots", "eating chips",
    "eating doughnuts", "eating hotdog", "eating ice cream", "eating spaghetti", "eating watermelon", "egg hunting",
    "exercising arm", "exercising with an exercise ball", "extinguishing fire", "faceplanting", "feeding birds",
    "feeding fish", "feeding goats", "filling eyebrows", "finger snapping", "fixing hair", "flipping pancake",
    "flying kite", "folding clothes", "folding napkins", "folding paper", "front raises", "frying vegetables",
    "garbage collecting", "gargling", "getting a haircut", "getting a tattoo", "giving or receiving award",
    "golf chipping", "golf driving", "golf putting", "grinding meat", "grooming dog", "grooming horse",
    "gymnastics tumbling", "hammer throw", "headbanging", "headbutting", "high jump", "high kick",
    "hitting baseball", "hockey stop", "holding snake", "hopscotch", "hoverboarding", "hugging", "hula hooping",
    "hurdling", "hurling (sport)", "ice climbing", "ice fishing", "ice skating", "ironing", "javelin throw",
    "jetskiing", "jogging", "juggling balls", "juggling fire", "juggling soccer ball", "jumping into pool",
    "jumpstyle dancing", "kicking field goal", "kicking soccer ball", "kissing", "kitesurfing", "knitting",
    "krumping", "laughing", "laying bricks", "long jump", "lunge", "making a cake", "making a sandwich",
    "making bed", "making jewelry", "making pizza", "making snowman", "making sushi", "making tea", "marching",
    "massaging back", "massaging feet", "massaging legs", "massaging person's head", "milking cow", "mopping floor",
    "motorcycling", "moving furniture", "mowing lawn", "news anchoring", "opening bottle", "opening present",
    "paragliding", "parasailing", "parkour", "passing American football (in game)",
    "passing American football (not in game)", "peeling apples", "peeling potatoes", "petting animal (not cat)",
    "petting cat", "picking fruit", "planting trees", "plastering", "playing accordion", "playing badminton",
    "playing bagpipes", "playing basketball", "playing bass guitar", "playing cards", "playing cello",
    "playing chess", "playing clarinet", "playing controller", "playing cricket", "playing cymbals",
    "playing didgeridoo", "playing drums", "playing flute", "playing guitar", "playing harmonica", "playing harp",
    "playing ice hockey", "playing keyboard", "playing kickball", "playing monopoly", "playing organ",
    "playing paintball", "playing piano", "playing poker", "playing recorder", "playing saxophone",
    "playing squash or racquetball", "playing tennis", "playing trombone", "playing trumpet", "playing ukulele",
    "playing violin", "playing volleyball", "playing xylophone", "pole vault", "presenting weather forecast",
    "pull ups", "pumping fist", "pumping gas", "punching bag", "punching person (boxing)", "push up", "pushing car",
    "pushing cart", "pushing wheelchair", "reading book", "reading newspaper", "recording music", "riding a bike",
    "riding camel", "riding elephant", "riding mechanical bull", "riding mountain bike", "riding mule",
    "riding or walking with horse", "riding scooter", "riding unicycle", "ripping paper", "robot dancing",
    "rock climbing", "rock scissors paper", "roller skating", "running on treadmill", "sailing", "salsa dancing",
    "sanding floor", "scrambling eggs", "scuba diving", "setting table", "shaking hands", "shaking head",
    "sharpening knives", "sharpening pencil", "shaving head", "shaving legs", "shearing sheep", "shining shoes",
    "shooting basketball", "shooting goal (soccer)", "shot put", "shoveling snow", "shredding paper",
    "shuffling cards", "side kick", "sign language interpreting", "singing", "situp", "skateboarding",
    "ski jumping", "skiing (not slalom or crosscountry)", "skiing crosscountry", "skiing slalom", "skipping rope",
    "skydiving", "slacklining", "slapping", "sled dog racing", "smoking", "smoking hookah", "snatch weight lifting",
    "sneezing", "sniffing", "snorkeling", "snowboarding", "snowkiting", "snowmobiling", "somersaulting",
    "spinning poi", "spray painting", "spraying", "springboard diving", "squat", "sticking tongue out",
    "stomping grapes", "stretching arm", "stretching leg", "strumming guitar", "surfing crowd", "surfing water",
    "sweeping floor", "swimming backstroke", "swimming breast stroke", "swimming butterfly stroke", "swing dancing",
    "swinging legs", "swinging on something", "sword fighting", "tai chi", "taking a shower", "tango dancing",
    "tap dancing", "tapping guitar", "tapping pen", "tasting beer", "tasting food", "testifying", "texting",
    "throwing axe", "throwing ball", "throwing discus", "tickling", "tobogganing", "tossing coin", "tossing salad",
    "training dog", "trapezing", "trimming or shaving beard", "trimming trees", "triple jump", "tying bow tie",
    "tying knot (not on a tie)", "tying tie", "unboxing", "unloading truck", "using computer",
    "using remote controller (not gaming)", "using segway", "vault", "waiting in line", "walking the dog",
    "washing dishes", "washing feet", "washing hair", "washing hands", "water skiing", "water sliding",
    "watering plants", "waxing back", "waxing chest", "waxing eyebrows", "waxing legs", "weaving basket", "welding",
    "whistling", "windsurfing", "wrapping present", "wrestling", "writing", "yawning", "yoga", "zumba",
)
_CLASS_INDEX = class_index(CLASS_NAMES)
_BY_KEY = {" ".join(n.lower().replace("_", " ").split()): i for n, i in _CLASS_INDEX.items()}

LAYOUT = DataLayout(
    folder=FOLDER,
    tree="""kinetics400/
  annotations/train.json       ({"<youtube id>": {"annotations": {"label": ..., "segment": [s, e]}, "duration": ...,
  annotations/validate.json      "subset": ..., "url": ...}, ...}: Kinetics-400 annotation format)
  train/<id[:2]>/<id>_<k>.jpg  (frames of clip <id>, k = 1, 2, ... in temporal order; 6 per clip in the paper)
  validate/<id[:2]>/<id>_<k>.jpg""",
    url="https://github.com/cvdfoundation/kinetics-dataset (Kinetics-400 annotations and videos; frames extracted "
        "per clip as allenai/ViRB's README describes)",
    counts={"train": 8_333},
    notes="6 frames per clip in numeric order of k (evenly spaced when a clip has more); clips without frames are "
          "left out (not downloaded); test = the official validate split; val = 10% of train carved with the "
          "run's seed (stratified)",
)


def label_of(label: object) -> int | None:
    if not isinstance(label, str):
        return None
    return _BY_KEY.get(" ".join(label.lower().replace("_", " ").split()))


def pick_frames(n: int, count: int = FRAMES) -> list[int]:
    """Positions (0-based) of ``count`` frames evenly spaced over ``n`` >= count, in temporal order."""
    return [((2 * j + 1) * n) // (2 * count) for j in range(count)]


@functools.lru_cache(maxsize=4)
def _read_annotations(path: str, size: int, mtime_ns: int) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HarnessError(f"{path}: not a readable Kinetics annotation JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise HarnessError(f"{path}: holds a {type(doc).__name__}, not the Kinetics-400 annotation dict "
                           f"{{youtube_id: {{\"annotations\": {{\"label\": ...}}, ...}}}}")
    return doc


def read_annotations(path: Path) -> dict:
    st = path.stat()
    return _read_annotations(str(path), st.st_size, st.st_mtime_ns)


def frame_numbers(folder: Path) -> dict[str, list[int]]:
    """{clip id: sorted frame numbers k} of the ``<id>_<k>.jpg`` files in one folder (one scandir)."""
    out: dict[str, list[int]] = {}
    for name in list_names(folder):
        if not name.lower().endswith(".jpg"):
            continue
        clip, _, k = name[:-4].rpartition("_")
        if clip and k.isdigit():
            out.setdefault(clip, []).append(int(k))
    for ks in out.values():
        ks.sort()  # numeric: 2 before 10
    return out


class KineticsSplit(FileClassification):
    """Clips of 6 frame paths in temporal order; ``warnings`` are shown by ``harness data check``."""

    def __init__(self, task: TaskSpec, req: DataRequest, items: Sequence, problems: Problems, warnings: list[str]):
        super().__init__(task, req, items, problems)
        self.warnings = warnings


def build(task: TaskSpec, req: DataRequest) -> KineticsSplit:
    root = task_folder(task, req)
    if req.split not in SPLITS:
        raise HarnessError(f"task {task.name}: unknown split {req.split!r} (Kinetics-400 has train and validate "
                           f"with labels)")
    problems = Problems(task.name, req.strict)
    ann_path = require(root / "annotations" / f"{req.split}.json", task.name, "the annotation file")
    frames_dir = require(root / req.split, task.name, "the frames folder")
    annotations = read_annotations(ann_path)
    frames: dict[str, dict[str, list[int]]] = {p: frame_numbers(frames_dir / p) for p in list_dirs(frames_dir)}
    items, absent = [], 0
    for clip in sorted(annotations):
        ks = frames.get(clip[:2], {}).get(clip)
        if not ks:
            absent += 1
            continue
        folder = frames_dir / clip[:2]
        entry = annotations[clip]
        ann = entry.get("annotations") if isinstance(entry, dict) else None
        y = label_of(ann.get("label") if isinstance(ann, dict) else None)
        if y is None:
            label = ann.get("label") if isinstance(ann, dict) else None
            problems.add(f"{ann_path}: {clip}", f"label {label!r} is not one of the 400 Kinetics-400 classes")
            continue
        first = 0 if ks[0] == 0 else 1  # numbered from 1 (or from 0)
        gaps = sorted(set(range(first, ks[-1] + 1)) - set(ks))
        if gaps:
            problems.add(folder / f"{clip}_{gaps[0]}.jpg", f"missing: clip {clip} has frames {ks[0]}..{ks[-1]} "
                         f"with {len(gaps)} missing")
            continue
        if len(ks) < FRAMES:
            problems.add(folder / f"{clip}_{ks[-1] + 1}.jpg", f"missing: clip {clip} has {len(ks)} frames, "
                         f"{FRAMES} are needed")
            continue
        picked = tuple(folder / f"{clip}_{ks[p]}.jpg" for p in pick_frames(len(ks)))
        items.append((picked, y))
    for prefix, clips in sorted(frames.items()):
        for clip in sorted(set(clips) - annotations.keys()):
            problems.add(frames_dir / prefix / f"{clip}_{clips[clip][0]}.jpg",
                         f"frames of clip {clip} have no entry in {ann_path.name}")
    problems.raise_if_any()
    warnings = []
    if absent:
        warnings.append(f"{req.split}: {absent:,} of the {len(annotations):,} clips in {ann_path.name} have no "
                        f"frames under {frames_dir} (not downloaded?) and are left out")
    return KineticsSplit(task, req, items, problems, warnings)


KINETICS_ACTION = register_task(image_task(
    name="kinetics_action", paper_name="Kinetics Action Pred.", nature="semantic", head="fusion", dataset=build,
    class_names=CLASS_NAMES, frames=FRAMES, epochs=100, train_size=50_000, layout=LAYOUT,
    splits=SplitSpec("train", None, "validate", val_fraction=0.1),
    description="400 actions from 6 frames in temporal order (train size: the paper's 50,000 frames = about "
                "8,333 clips); frames resized to 224 x 224 without keeping the aspect ratio (as the reference)",
))
