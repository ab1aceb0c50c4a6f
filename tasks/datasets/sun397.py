"""SUN397: ``SUN397/<letter>/<class>[/<sub>]/sun_*.jpg`` and ``SUN397/ClassName.txt``, as released.

``SUN397.tar.gz`` unpacks to ``SUN397/`` with ``ClassName.txt`` (the 397 classes, one
``/<letter>/<class>[/<sub>]`` per line; index = line order, which is sorted) and one folder per
class under its first letter: 108,754 images. The separate ``Partitions.zip`` holds the ten
official partitions (``Training_NN.txt`` / ``Testing_NN.txt``, 50 + 50 images per class = 19,850
each, one ``/<letter>/<class>/<file>`` per line).

The paper's 87,003 train images are not an official partition: the paper took SUN397 from VTAB,
whose train + validation splits (TFDS's ``sun397/tfds`` lists, a random 70% / 10% / 20% of the
images) hold 76,128 + 10,875 = 87,003 images, test 21,750. Split, in order of preference:
1. TFDS's lists ``sun397_tfds_tr.txt``, ``sun397_tfds_va.txt``, ``sun397_tfds_te.txt`` (same line
   format as the partitions) copied into ``SUN397/``: train = tr + va, test = te;
2. otherwise a deterministic stratified 80% / 20% split: the train total is floor(0.8 x N)
   (87,003 of the full release's 108,754), shared out among the classes in proportion (largest
   remainders), and within a class the images first in SHA-256 order of their release path are
   train (``paper_split``); test = the other 21,751.
The harness carves its validation split (10%, stratified) from train.

Checks: ``ClassName.txt`` must be the release's list; a folder that is no class is a problem;
an image named by a partition file (or a TFDS list) that is missing from its class's folder is a
problem naming it (a class folder that is absent altogether only makes a subset).

torchvision's ``SUN397`` reads this layout but is not used: it offers no split, keeps its
per-image paths private, and one image outside the classes of ``ClassName.txt`` makes it fail
as a whole.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from harness.common.errors import HarnessError

from ..registry import register_task
from ..spec import DataLayout, DataRequest, TaskSpec
from .base import FileClassification, Problems, class_index, image_task, list_dirs, list_files, require, task_folder
from .paper_split import proportional_quotas, split_by_hash

FOLDER = "SUN397"
TRAIN_FRACTION = 0.8
TFDS_LISTS = {"tr": "sun397_tfds_tr.txt", "va": "sun397_tfds_va.txt", "te": "sun397_tfds_te.txt"}
SPLIT_LISTS = {"train": ("tr", "va"), "test": ("te",)}
_PARTITION = re.compile(r"^(Training|Testing)_\d\d\.txt$")

# The release's ClassName.txt without the "/<letter>/" prefix, in its (sorted) order.
_CLASS_TEXT = """
abbey airplane_cabin airport_terminal alley amphitheater amusement_arcade amusement_park anechoic_chamber
apartment_building/outdoor apse/indoor aquarium aqueduct arch archive arrival_gate/outdoor art_gallery
art_school art_studio assembly_line athletic_field/outdoor atrium/public attic auditorium auto_factory
badlands badminton_court/indoor baggage_claim bakery/shop balcony/exterior balcony/interior ball_pit ballroom
bamboo_forest banquet_hall bar barn barndoor baseball_field basement basilica basketball_court/outdoor
bathroom batters_box bayou bazaar/indoor bazaar/outdoor beach beauty_salon bedroom berth biology_laboratory
bistro/indoor boardwalk boat_deck boathouse bookstore booth/indoor botanical_garden bow_window/indoor
bow_window/outdoor bowling_alley boxing_ring brewery/indoor bridge building_facade bullring burial_chamber
bus_interior butchers_shop butte cabin/outdoor cafeteria campsite campus canal/natural canal/urban candy_store
canyon car_interior/backseat car_interior/frontseat carrousel casino/indoor castle catacomb cathedral/indoor
cathedral/outdoor cavern/indoor cemetery chalet cheese_factory chemistry_lab chicken_coop/indoor
chicken_coop/outdoor childs_room church/indoor church/outdoor classroom clean_room cliff cloister/indoor
closet clothing_store coast cockpit coffee_shop computer_room conference_center conference_room
construction_site control_room control_tower/outdoor corn_field corral corridor cottage_garden courthouse
courtroom courtyard covered_bridge/exterior creek crevasse crosswalk cubicle/office dam delicatessen
dentists_office desert/sand desert/vegetation diner/indoor diner/outdoor dinette/home dinette/vehicle
dining_car dining_room discotheque dock doorway/outdoor dorm_room driveway driving_range/outdoor drugstore
electrical_substation elevator/door elevator/interior elevator_shaft engine_room escalator/indoor excavation
factory/indoor fairway fastfood_restaurant field/cultivated field/wild fire_escape fire_station
firing_range/indoor fishpond florist_shop/indoor food_court forest/broadleaf forest/needleleaf forest_path
forest_road formal_garden fountain galley game_room garage/indoor garbage_dump gas_station gazebo/exterior
general_store/indoor general_store/outdoor gift_shop golf_course greenhouse/indoor greenhouse/outdoor
gymnasium/indoor hangar/indoor hangar/outdoor harbor hayfield heliport herb_garden highway hill home_office
hospital hospital_room hot_spring hot_tub/outdoor hotel/outdoor hotel_room house hunting_lodge/outdoor
ice_cream_parlor ice_floe ice_shelf ice_skating_rink/indoor ice_skating_rink/outdoor iceberg igloo
industrial_area inn/outdoor islet jacuzzi/indoor jail/indoor jail_cell jewelry_shop kasbah kennel/indoor
kennel/outdoor kindergarden_classroom kitchen kitchenette labyrinth/outdoor lake/natural landfill landing_deck
laundromat lecture_room library/indoor library/outdoor lido_deck/outdoor lift_bridge lighthouse
limousine_interior living_room lobby lock_chamber locker_room mansion manufactured_home market/indoor
market/outdoor marsh martial_arts_gym mausoleum medina moat/water monastery/outdoor mosque/indoor
mosque/outdoor motel mountain mountain_snowy movie_theater/indoor museum/indoor music_store music_studio
nuclear_power_plant/outdoor nursery oast_house observatory/outdoor ocean office office_building
oil_refinery/outdoor oilrig operating_room orchard outhouse/outdoor pagoda palace pantry park
parking_garage/indoor parking_garage/outdoor parking_lot parlor pasture patio pavilion pharmacy phone_booth
physics_laboratory picnic_area pilothouse/indoor planetarium/outdoor playground playroom plaza podium/indoor
podium/outdoor pond poolroom/establishment poolroom/home power_plant/outdoor promenade_deck pub/indoor pulpit
putting_green racecourse raceway raft railroad_track rainforest reception recreation_room
residential_neighborhood restaurant restaurant_kitchen restaurant_patio rice_paddy riding_arena river
rock_arch rope_bridge ruin runway sandbar sandbox sauna schoolhouse sea_cliff server_room shed shoe_shop
shopfront shopping_mall/indoor shower skatepark ski_lodge ski_resort ski_slope sky skyscraper slum snowfield
squash_court stable stadium/baseball stadium/football stage/indoor staircase street subway_interior
subway_station/platform supermarket sushi_bar swamp swimming_pool/indoor swimming_pool/outdoor
synagogue/indoor synagogue/outdoor television_studio temple/east_asia temple/south_asia tennis_court/indoor
tennis_court/outdoor tent/outdoor theater/indoor_procenium theater/indoor_seats thriftshop throne_room
ticket_booth toll_plaza topiary_garden tower toyshop track/outdoor train_railway train_station/platform
tree_farm tree_house trench underwater/coral_reef utility_room valley van_interior vegetable_garden veranda
veterinarians_office viaduct videostore village vineyard volcano volleyball_court/indoor
volleyball_court/outdoor waiting_room warehouse/indoor water_tower waterfall/block waterfall/fan
waterfall/plunge watering_hole wave wet_bar wheat_field wind_farm windmill wine_cellar/barrel_storage
wine_cellar/bottle_storage wrestling_ring/indoor yard youth_hostel
"""

CLASS_NAMES: tuple[str, ...] = tuple(_CLASS_TEXT.split())


def class_dir(name: str) -> str:
    """``abbey`` -> ``a/abbey``: the folder of a class, relative to ``SUN397/``."""
    return f"{name[0]}/{name}"


LAYOUT = DataLayout(
    folder=FOLDER,
    tree="""SUN397/
  ClassName.txt          (397 lines: /a/abbey, /a/airplane_cabin, ..., /a/apartment_building/outdoor, ...)
  a/abbey/sun_*.jpg
  a/apartment_building/outdoor/sun_*.jpg
  ... y/youth_hostel/    (one folder per class under its first letter; 108,754 images)
  Partitions/Training_01.txt ... Testing_10.txt   (optional, from Partitions.zip: checks listed images exist)
  sun397_tfds_tr.txt sun397_tfds_va.txt sun397_tfds_te.txt
                         (optional: TFDS/VTAB's split lists, used as the split when present)""",
    url="https://vision.princeton.edu/projects/2010/SUN/ (SUN397.tar.gz; Partitions.zip)",
    counts={"train": 87_003, "test": 21_751},
    notes="train = TFDS's tr + va lists when present (87,003; test 21,750), else a stratified 80% of all images "
          "(floor(0.8 N) = 87,003, per class the first in SHA-256 order of the path); val carved from train",
)


def read_list(path: Path, problems: Problems) -> list[str]:
    """The ``/<letter>/<class>/<file>`` lines of a partition file or TFDS list."""
    try:
        lines = [x.strip() for x in path.read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise HarnessError(f"{path}: unreadable ({exc})") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line:
            continue
        if not line.startswith("/") or line.count("/") < 3:
            problems.add(f"{path}:{n}", f"{line!r} is not /<letter>/<class>/<file>")
            continue
        out.append(line)
    return out


def check_class_file(base: Path, task: TaskSpec) -> None:
    path = require(base / "ClassName.txt", task.name, "the class list")
    names = tuple(x.strip()[3:] for x in path.read_text().splitlines() if x.strip())
    if names != CLASS_NAMES:
        first = next((f"line {i + 1}: {a!r} where the release has {b!r}" for i, (a, b) in
                      enumerate(zip(names, CLASS_NAMES, strict=False)) if a != b), f"{len(names)} classes, not 397")
        raise HarnessError(f"{path}: not the SUN397 release's class list ({first}); is this SUN397?")


def list_release(base: Path, problems: Problems) -> tuple[list[str], np.ndarray, set[str]]:
    """(release paths ``/<letter>/<class>/<file>``, class indices, classes whose folder exists);
    a folder that is neither a class nor holds one is a problem."""
    index = class_index(CLASS_NAMES)
    parents = {c.split("/")[0] for c in CLASS_NAMES if "/" in c}
    rels: list[str] = []
    labels: list[int] = []
    present: set[str] = set()
    for letter in list_dirs(base):
        if letter == "Partitions":
            continue
        for name in list_dirs(base / letter):
            if name not in index and name not in parents:
                problems.add(base / letter / name, "not a SUN397 class folder (see ClassName.txt)")
            if name in parents:
                for sub in list_dirs(base / letter / name):
                    if f"{name}/{sub}" not in index:
                        problems.add(base / letter / name / sub, "not a SUN397 class folder (see ClassName.txt)")
    for c, name in enumerate(CLASS_NAMES):
        folder = base / class_dir(name)
        files = list_files(folder, (".jpg",))
        if files or folder.is_dir():
            present.add(name)
        rels += [f"/{class_dir(name)}/{f}" for f in files]
        labels += [c] * len(files)
    return rels, np.asarray(labels, dtype=np.int64), present


def _class_of(rel: str) -> str:
    return rel[3:].rsplit("/", 1)[0]


def check_listed(base: Path, lists: list[Path], position: dict[str, int], present: set[str],
                 problems: Problems, cache: dict[Path, list[str]]) -> None:
    """Every image a partition file / TFDS list names must exist when its class folder does."""
    for path in lists:
        for rel in cache.setdefault(path, read_list(path, problems)):
            cls = _class_of(rel)
            if cls not in CLASS_NAMES:
                problems.add(path, f"names {rel}, whose class is not in ClassName.txt")
            elif rel not in position and cls in present:
                problems.add(base / rel.lstrip("/"), f"listed in {path.relative_to(base)} but missing")


def build(task: TaskSpec, req: DataRequest) -> FileClassification:
    base = task_folder(task, req)
    if req.split not in SPLIT_LISTS:
        raise HarnessError(f"task {task.name}: no split {req.split!r} (train, test)")
    check_class_file(base, task)
    problems = Problems(task.name, req.strict)
    rels, labels, present = list_release(base, problems)
    position = {r: i for i, r in enumerate(rels)}
    partitions = [base / "Partitions" / n for n in list_files(base / "Partitions", (".txt",)) if _PARTITION.match(n)]
    tfds = {k: base / n for k, n in TFDS_LISTS.items() if (base / n).is_file()}
    if tfds and len(tfds) != len(TFDS_LISTS):
        raise HarnessError(f"{base}: found {', '.join(p.name for p in tfds.values())} but not all of "
                           f"{', '.join(TFDS_LISTS.values())}; give all three TFDS lists or none")
    cache: dict[Path, list[str]] = {}
    check_listed(base, partitions + list(tfds.values()), position, present, problems, cache)
    if tfds:
        keep = sorted({position[r] for k in SPLIT_LISTS[req.split] for r in cache[tfds[k]] if r in position})
    else:
        counts = np.bincount(labels, minlength=len(CLASS_NAMES))
        keep = split_by_hash(rels, labels, proportional_quotas(counts, TRAIN_FRACTION), task.name, req.split)
    problems.raise_if_any()
    items = [(base / rels[i].lstrip("/"), int(labels[i])) for i in keep]
    return FileClassification(task, req, items, problems)


SUN397_CLS = register_task(image_task(
    name="sun397_cls", paper_name="SUN Scene Cls.", nature="semantic", dataset=build, class_names=CLASS_NAMES,
    epochs=250, train_size=87_003, layout=LAYOUT,
    description="397 scene classes; train = VTAB's 87,003 (TFDS lists) or a stratified 80%; resized to "
                "224 x 224 without keeping the aspect ratio",
))
