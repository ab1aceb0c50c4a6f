"""Oxford-IIIT Pets (pets_cls, pets_instance_seg) from a fixture in the release's layout: split lists
with comment lines, 1-based class ids, JPEG images and trimaps (1 pet, 2 background, 3 border)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from harness.common.errors import HarnessError
from tasks.datasets.pets import BREEDS, IGNORE, read_trimap
from tasks.registry import get_task
from tasks.spec import DataRequest

from .fixtures_b import assert_listed, check_fails_naming, deleted_fails_naming, size_mismatch, write_grey
from .util import assert_tiny_split_runs, check_ok, data_check, eval_record, write_image

SIZE = 12  # square fixture images, so --resolution 12 leaves the trimap unresized
# (class id 1-based, species) of three breeds: the first cat, a dog, the last breed
PICK = {"Abyssinian": (1, 1), "beagle": (5, 2), "yorkshire_terrier": (37, 2)}
N = {"trainval": {"Abyssinian": 4, "beagle": 3, "yorkshire_terrier": 4}, "test": {"Abyssinian": 2, "beagle": 2,
                                                                                   "yorkshire_terrier": 1}}
HEADER = ("#Image CLASS-ID SPECIES BREED ID\n#ID: 1:37 Class ids\n#SPECIES: 1:Cat 2:Dog\n"
          "#BREED ID: 1-25:Cat 1:12:Dog\n")


def trimap(k: int) -> np.ndarray:
    """Rows 0..3 background (2), rows 4..5 border (3), the rest pet (1); image k also has its first
    k columns of the pet rows marked border: a per-image known share."""
    t = np.full((SIZE, SIZE), 1, np.uint8)
    t[:4] = 2
    t[4:6] = 3
    t[6:, :k] = 3
    return t


def write_pets(root: Path, sizes: dict[str, dict[str, int]] = N) -> dict:
    folder = root / "oxford-iiit-pet"
    stems: dict[str, list[str]] = {}
    k = 0
    for split, counts in sizes.items():
        lines = [HEADER]
        for breed, n in counts.items():
            cls, species = PICK[breed]
            for j in range(n):
                stem = f"{breed}_{100 * (split == 'test') + j + 1}"
                lines.append(f"{stem} {cls} {species} {j + 1}\n")
                write_image(folder / "images" / f"{stem}.jpg", (SIZE, SIZE), seed=k)
                write_grey(folder / "annotations" / "trimaps" / f"{stem}.png", trimap(k % 5))
                stems.setdefault(split, []).append(stem)
                k += 1
        (folder / "annotations").mkdir(parents=True, exist_ok=True)
        (folder / "annotations" / f"{split}.txt").write_text("".join(lines))
    return stems


def expected_fractions(n_images: int, start: int) -> dict:
    """Shares of background / pet / ignore over the fixture trimaps start..start+n-1, counted by hand."""
    bg = pet = border = 0
    for k in range(start, start + n_images):
        t = trimap(k % 5)
        bg, pet, border = bg + (t == 2).sum(), pet + (t == 1).sum(), border + (t == 3).sum()
    total = n_images * SIZE * SIZE
    return {"background": bg / total, "pet": pet / total, "ignore": border / total}


def test_tasks_are_listed_as_the_table():
    assert_listed({"pets_cls": ("semantic image-level", "linear", "top1", 500, 1),
                   "pets_instance_seg": ("semantic pixelwise", "deeplabv3plus", "miou", 100, 1)})


def test_data_check_pets_cls_histogram(tmp_path):
    write_pets(tmp_path)
    doc = check_ok("pets_cls", tmp_path)
    assert doc["root"] == str(tmp_path / "oxford-iiit-pet")
    assert set(doc["splits"]) == {"trainval", "test"}
    for split, counts in N.items():
        entry = doc["splits"][split]
        assert entry["n"] == sum(counts.values()) and entry["expected"] == {"trainval": 3680, "test": 3669}[split]
        hist = entry["labels"]["histogram"]
        assert entry["labels"]["classes"] == 37 and len(hist) == 37
        assert hist == {b: counts.get(b, 0) for b in BREEDS}  # class id 1 -> Abyssinian, 37 -> yorkshire_terrier


def test_data_check_pets_seg_fractions_ignore_the_border(tmp_path):
    write_pets(tmp_path)
    rc, doc, err = data_check("pets_instance_seg", tmp_path)
    assert rc == 0, err
    n_tv = sum(N["trainval"].values())
    for split, start in (("trainval", 0), ("test", n_tv)):
        labels = doc["splits"][split]["labels"]
        assert labels["classes"] == 2
        assert labels["fractions"] == pytest.approx(expected_fractions(sum(N[split].values()), start))
    assert doc["splits"]["test"]["labels"]["fractions"]["ignore"] > 2 / SIZE  # border rows + the per-image columns


def test_loader_target_maps_trimap_values(tmp_path):
    stems = write_pets(tmp_path)
    task = get_task("pets_instance_seg")
    ds = task.dataset(task, DataRequest("test", tmp_path, SIZE, None, train=False))
    n_tv = sum(N["trainval"].values())
    for i in range(len(ds)):
        t = trimap((n_tv + i) % 5)
        want = np.where(t == 1, 1, np.where(t == 2, 0, IGNORE))
        sample = ds[i]
        assert sample["image"].shape == (3, SIZE, SIZE) and sample["target"].dtype == torch.int64
        assert np.array_equal(sample["target"].numpy(), want), stems["test"][i]
        native, valid = ds.native_target(i)
        assert np.array_equal(native, want) and np.array_equal(valid, want != IGNORE)  # the border is no label
        assert torch.equal(sample["valid"], sample["target"] != IGNORE)
    small = task.dataset(task, DataRequest("test", tmp_path, 6, None, train=False))[0]["target"]
    assert small.shape == (6, 6) and set(np.unique(small.numpy())) <= {0, 1, IGNORE}  # nearest: never blended
    assert (small[:2] == 0).all() and (small[2] == IGNORE).all()  # rows 0-3 background, 4-5 border, halved


def test_a_value_outside_the_trimap_codes_is_refused(tmp_path):
    path = write_grey(tmp_path / "t.png", np.array([[1, 2], [3, 4]], np.uint8))
    with pytest.raises(HarnessError, match="value 4 is not a trimap value"):
        read_trimap(path)


def test_eval_end_to_end(tmp_path):
    write_pets(tmp_path)
    n_tv, n_test = sum(N["trainval"].values()), sum(N["test"].values())
    rec = eval_record("pets_cls", tmp_path, tmp_path / "out")
    assert rec["task"] == "pets_cls" and rec["status"] == "ok" and rec["metric"] == "top1"
    assert rec["n"]["test"] == n_test and rec["n"]["train"] + rec["n"]["val"] == n_tv
    assert rec["val_split"].startswith("stratified 0.1 of 'trainval'") and rec["train_size"] == 3680
    rec = eval_record("pets_instance_seg", tmp_path, tmp_path / "out")
    assert rec["status"] == "ok" and rec["metric"] == "miou" and rec["n"]["test"] == n_test
    assert rec["n"]["train"] + rec["n"]["val"] == n_tv and 0.0 <= rec["test"] <= 1.0


def test_a_deleted_image_is_a_problem_naming_it(tmp_path):
    stems = write_pets(tmp_path)
    gone = tmp_path / "oxford-iiit-pet" / "images" / f"{stems['test'][2]}.jpg"
    doc = deleted_fails_naming("pets_cls", tmp_path, gone)
    assert doc["splits"]["trainval"]["n"] == sum(N["trainval"].values())


def test_a_deleted_trimap_is_a_problem_naming_it(tmp_path):
    stems = write_pets(tmp_path)
    gone = tmp_path / "oxford-iiit-pet" / "annotations" / "trimaps" / f"{stems['trainval'][5]}.png"
    gone.unlink()
    check_fails_naming("pets_instance_seg", tmp_path, str(gone))
    # the classification task does not read trimaps: still fine
    task = get_task("pets_cls")
    assert len(task.dataset(task, DataRequest("trainval", tmp_path, 8, None, train=False))) == 11


def test_a_line_whose_breed_disagrees_with_its_class_id_is_a_problem(tmp_path):
    write_pets(tmp_path)
    lst = tmp_path / "oxford-iiit-pet" / "annotations" / "test.txt"
    lst.write_text(lst.read_text().replace("beagle_102 5 2", "beagle_102 6 2"))
    task = get_task("pets_cls")
    ds = task.dataset(task, DataRequest("test", tmp_path, 8, None, train=False, strict=False))
    assert len(ds) == sum(N["test"].values()) - 1
    (problem,) = ds.problems
    assert "test.txt:" in problem and "beagle_102 has class id 6 (Bengal)" in problem
    with pytest.raises(HarnessError, match="beagle_102"):
        task.dataset(task, DataRequest("test", tmp_path, 8, None, train=False))


def test_pets_cls_tiny_split_one_image_per_breed_runs(tmp_path):
    """Issue 39: one trainval image per breed left the stratified val empty (IndexError)."""
    one = {breed: 1 for breed in PICK}
    write_pets(tmp_path, {"trainval": one, "test": one})
    rec = assert_tiny_split_runs("pets_cls", tmp_path, tmp_path / "out", 3)
    assert rec["n"]["val"] == 1 and rec["n"]["test"] == 3


def test_a_trimap_of_another_size_than_its_image_fails_check_as_it_fails_eval(tmp_path):
    """Issue 39: check said ok where eval refused; a trimap of another size than its image (a file of
    another release, or resized) is now a check problem, with the line eval fails with."""
    stems = write_pets(tmp_path)
    stem = stems["trainval"][2]
    odd = write_grey(tmp_path / "oxford-iiit-pet" / "annotations" / "trimaps" / f"{stem}.png",
                     np.ones((SIZE + 3, SIZE), np.uint8))
    doc = check_fails_naming("pets_instance_seg", tmp_path, str(odd))
    assert doc["problems"] == [size_mismatch(odd, (SIZE, SIZE + 3), f"{stem}.jpg", (SIZE, SIZE))]
    assert data_check("pets_cls", tmp_path)[0] == 0  # classification reads no trimap
    task = get_task("pets_instance_seg")
    ds = task.dataset(task, DataRequest("trainval", tmp_path, None, None, train=False))
    with pytest.raises(HarnessError) as exc:
        ds[2]
    assert str(exc.value) == doc["problems"][0]
