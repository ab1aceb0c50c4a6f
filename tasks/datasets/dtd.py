"""DTD (Describable Textures, r1.0.1): ``dtd/images/<class>/*.jpg`` and ``dtd/labels/{train,val,test}N.txt``.

The release's label files list one ``<class>/<file>.jpg`` per line, 40 images of each of the
47 classes per file, in 10 partitions N = 1..10. The paper (after VTAB) trains on partition 1's
train and val together (3,760 = 2 x 1,880) and tests on ``test1.txt`` (1,880); the harness
carves its own validation split (10%, stratified) from those 3,760. Each image is paired with
its label by the name on its line: a line whose image is absent is a problem naming the file.
The class map is the release's 47 class names in sorted order (the folder names), the same for
every split.

torchvision's ``DTD`` is not used: it expects the release one folder deeper (``<root>/dtd/dtd/``,
where its downloader unpacks it) and builds its class map from the classes one split's file
happens to contain.
"""

from __future__ import annotations

from pathlib import Path

from harness.common.errors import HarnessError

from ..registry import register_task
from ..spec import DataLayout, DataRequest, TaskSpec
from .base import FileClassification, Problems, class_index, image_task, list_dirs, list_names, require, task_folder

FOLDER = "dtd"
PARTITION = 1
# The paper's splits, as unions of the release's label files of partition 1.
SPLIT_FILES = {"train": (f"train{PARTITION}.txt", f"val{PARTITION}.txt"), "test": (f"test{PARTITION}.txt",)}

CLASS_NAMES: tuple[str, ...] = (
    "banded", "blotchy", "braided", "bubbly", "bumpy", "chequered", "cobwebbed", "cracked", "crosshatched",
    "crystalline", "dotted", "fibrous", "flecked", "freckled", "frilly", "gauzy", "grid", "grooved", "honeycombed",
    "interlaced", "knitted", "lacelike", "lined", "marbled", "matted", "meshed", "paisley", "perforated", "pitted",
    "pleated", "polka-dotted", "porous", "potholed", "scaly", "smeared", "spiralled", "sprinkled", "stained",
    "stratified", "striped", "studded", "swirly", "veined", "waffled", "woven", "wrinkled", "zigzagged",
)

LAYOUT = DataLayout(
    folder=FOLDER,
    tree="""dtd/
  images/
    banded/banded_0002.jpg ...
    blotchy/ ... zigzagged/            (47 classes x 120 images = 5,640)
  labels/
    train1.txt val1.txt test1.txt ... train10.txt val10.txt test10.txt
                 (one "<class>/<file>.jpg" per line, 1,880 lines each)""",
    url="https://www.robots.ox.ac.uk/~vgg/data/dtd/ (dtd-r1.0.1.tar.gz)",
    counts={"train": 3_760, "test": 1_880},
    notes="train = labels/train1.txt + labels/val1.txt (the paper's 3,760), test = labels/test1.txt; "
          "val carved from train",
)


def read_labels(path: Path, problems: Problems) -> list[tuple[str, str]]:
    """(class, file name) per line of one label file; a malformed line is a problem naming it."""
    out = []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise HarnessError(f"{path}: unreadable ({exc})") from None
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        parts = line.split("/")
        if len(parts) != 2 or not parts[1]:
            problems.add(f"{path}:{n}", f"{line!r} is not <class>/<file>")
            continue
        out.append((parts[0], parts[1]))
    return out


def build(task: TaskSpec, req: DataRequest) -> FileClassification:
    root = task_folder(task, req)
    if req.split not in SPLIT_FILES:
        raise HarnessError(f"task {task.name}: no split {req.split!r} (train, test)")
    images = require(root / "images", task.name, "the image folders")
    labels = require(root / "labels", task.name, "the label files")
    problems = Problems(task.name, req.strict)
    index = class_index(CLASS_NAMES)
    for folder in list_dirs(images):
        if folder not in index:
            problems.add(images / folder, "not a DTD class folder")
    present: dict[str, set[str]] = {}
    items = []
    seen: set[tuple[str, str]] = set()
    for fname in SPLIT_FILES[req.split]:
        path = require(labels / fname, task.name, "a label file of partition 1")
        for cls, name in read_labels(path, problems):
            if cls not in index:
                problems.add(path, f"names {cls}/{name}, but {cls!r} is not a DTD class")
                continue
            if (cls, name) in seen:
                problems.add(images / cls / name, f"listed twice in {', '.join(SPLIT_FILES[req.split])}")
                continue
            seen.add((cls, name))
            if cls not in present:
                present[cls] = list_names(images / cls)
            if name not in present[cls]:
                problems.add(images / cls / name, f"listed in labels/{fname} but missing")
                continue
            items.append((images / cls / name, index[cls]))
    problems.raise_if_any()
    return FileClassification(task, req, items, problems)


DTD_CLS = register_task(image_task(
    name="dtd_cls", paper_name="dtd Cls.", nature="semantic", dataset=build, class_names=CLASS_NAMES,
    epochs=100, train_size=3_760, layout=LAYOUT,
    description="47 texture classes; train = partition 1's train + val, test = its test; resized to 224 x 224 "
                "without keeping the aspect ratio",
))
