"""The image-folder dataset, on a tiny generated DATA/DOMAIN/CLASS/IMAGE tree."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dalib.data import get_dataset, infer_dataset, list_domains, load_domain
from dalib.data.image_folder import IMAGENET_MEAN, IMAGENET_STD
from dalib.errors import DataError, UnknownNameError

# the office fixture's amazon has no calculator folder on purpose and webcam a notes.txt (tests below check the warnings)
pytestmark = [pytest.mark.filterwarnings("ignore:image folder .* has no folder for:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:image folder .* skipped:RuntimeWarning")]  # its notes.txt


def _image(path: Path, color, size=(20, 14), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


@pytest.fixture
def office(tmp_path) -> Path:
    """amazon: bike (2), mug (1); webcam: bike (1), calculator (1), mug (1), and clutter."""
    root = tmp_path / "office"
    _image(root / "amazon" / "bike" / "b1.png", (255, 0, 0))
    _image(root / "amazon" / "bike" / "b2.PNG", (0, 255, 0))
    _image(root / "amazon" / "mug" / "m1.png", (0, 0, 255))
    _image(root / "webcam" / "bike" / "b1.png", 128, mode="L")  # greyscale
    _image(root / "webcam" / "calculator" / "c1.png", (10, 20, 30, 255), mode="RGBA")
    _image(root / "webcam" / "mug" / "m1.jpg", (255, 255, 255))  # a JPEG
    (root / "webcam" / "mug" / "notes.txt").write_text("not an image")  # ignored
    (root / "webcam" / "mug" / ".hidden.png").write_bytes(b"ignored")
    (root / ".cache").mkdir()  # hidden folders are not domains
    return root


def test_info():
    info = get_dataset("image-folder")
    assert info.domains == () and info.num_classes is None and info.needs == "data_dir"
    assert info.resolve("Anything") == "Anything"


def test_loads_with_shared_classes(office):
    a = load_domain("image-folder", "amazon", data_dir=office, image_size=32)
    w = load_domain("image-folder", "webcam", data_dir=office, image_size=32)
    assert a.classes == w.classes == ["bike", "calculator", "mug"]
    assert a.num_classes == w.num_classes == 3
    assert (len(a), len(w)) == (3, 3)
    assert a.input_shape == (3, 32, 32) and a.x is None and a.y is None
    assert a.dataset.targets == [0, 0, 2] and w.dataset.targets == [0, 1, 2]
    assert a.origin == str(office / "amazon")
    x, y = a.dataset[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 0
    # a red image, ImageNet-normalised
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    # torchvision's ImageNet statistics, in RGB order (what pre-trained ResNets expect)
    torch.testing.assert_close(mean, torch.tensor([0.485, 0.456, 0.406]))
    torch.testing.assert_close(std, torch.tensor([0.229, 0.224, 0.225]))
    torch.testing.assert_close(x[:, 5, 5], (torch.tensor([1.0, 0.0, 0.0]) - mean) / std)
    grey, _ = w.dataset[0]  # greyscale and RGBA decode to 3 channels
    torch.testing.assert_close(grey[:, 0, 0], (torch.full((3,), 128 / 255) - mean) / std)
    batch = next(iter(torch.utils.data.DataLoader(w.dataset, batch_size=3)))
    assert batch[0].shape == (3, 3, 32, 32) and batch[1].tolist() == [0, 1, 2]


def test_default_size_is_224(office):
    dom = load_domain("image-folder", "amazon", data_dir=str(office))
    assert dom.input_shape == (3, 224, 224) and dom.dataset[2][0].shape == (3, 224, 224)


def test_domain_names(office):
    assert list_domains("image-folder", data_dir=office) == ["amazon", "webcam"]
    assert load_domain("image-folder", "WEBCAM", data_dir=office, image_size=8).name == "webcam"
    with pytest.raises(UnknownNameError) as exc:
        load_domain("image-folder", "dslr", data_dir=office)
    assert "'dslr'" in str(exc.value) and "amazon, webcam" in str(exc.value)
    with pytest.raises(UnknownNameError):
        infer_dataset("amazon", "webcam_x")


def test_needs_data_dir(tmp_path):
    with pytest.raises(DataError, match="needs a data folder: pass --data PATH"):
        load_domain("image-folder", "amazon")
    with pytest.raises(DataError, match=f"data folder not found: {tmp_path / 'none'}"):
        load_domain("image-folder", "amazon", data_dir=tmp_path / "none")
    (tmp_path / "file.zip").write_bytes(b"PK")
    with pytest.raises(DataError, match=f"data folder is a file, not a folder: {tmp_path / 'file.zip'}"):
        load_domain("image-folder", "amazon", data_dir=tmp_path / "file.zip")
    (tmp_path / "file.zip").unlink()
    with pytest.raises(DataError, match="no domain folders in"):
        load_domain("image-folder", "amazon", data_dir=tmp_path)


def test_empty_domain(office):
    (office / "dslr").mkdir()
    with pytest.raises(DataError, match=f"empty domain: no class folders and no images in {office / 'dslr'}"):
        load_domain("image-folder", "dslr", data_dir=office)


def test_empty_class(office):
    (office / "amazon" / "calculator").mkdir()
    (office / "amazon" / "calculator" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=f"empty class folder: {office / 'amazon' / 'calculator'}"):
        load_domain("image-folder", "amazon", data_dir=office)


@pytest.mark.parametrize(
    "content", [b"", b"not a png at all", None], ids=["empty", "garbage", "truncated"]
)
def test_unreadable_image(office, content):
    bad = office / "amazon" / "mug" / "m2.png"
    if content is None:
        Image.fromarray(
            np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        ).save(bad)
        data = bad.read_bytes()
        content = data[: len(data) // 2]
    bad.write_bytes(content)
    dom = load_domain("image-folder", "amazon", data_dir=office, image_size=16)  # lazy: loads fine
    assert len(dom) == 4
    dom.dataset[0]
    with pytest.raises(DataError) as exc:
        dom.dataset[3]
    msg = str(exc.value)
    assert msg.startswith(f"cannot read image: {bad} (dataset image-folder, domain amazon)")
    assert "\n" not in msg


def test_16_bit_greyscale_images_keep_their_grey_level(tmp_path):
    """A 16-bit PNG at half range loads as the 8-bit image at half range does, not as white."""
    from dalib.data.image_folder import load_image

    Image.fromarray(np.full((10, 10), 32896, np.uint16)).save(tmp_path / "half16.png")  # 128 * 257
    Image.fromarray(np.full((10, 10), 128, np.uint8)).save(tmp_path / "half8.png")
    with Image.open(tmp_path / "half16.png") as im:
        assert im.mode.startswith("I")  # what PIL makes of it
    assert torch.equal(load_image(tmp_path / "half16.png", 4), load_image(tmp_path / "half8.png", 4))
    grey = load_image(tmp_path / "half8.png", 4)[:, 0, 0] * torch.tensor(IMAGENET_STD) + torch.tensor(IMAGENET_MEAN)
    assert grey.tolist() == pytest.approx([128 / 255] * 3, abs=1e-6)


def test_32_bit_integer_greyscale_images_are_read_by_their_range(tmp_path):
    """numpy's int32 images saved as TIFF (PIL mode I): 0..255 had been read as 16-bit, near black."""
    from dalib.data.image_folder import load_image

    Image.fromarray(np.full((10, 10), 128, np.uint8)).save(tmp_path / "half8.png")
    half = load_image(tmp_path / "half8.png", 4)
    for name, value, dtype in (("i32.tiff", 128, np.int32), ("i32_16.tiff", 128 * 257, np.int32),
                               ("i32_wide.tiff", 2**30, np.int32), ("u16.tiff", 128 * 257, np.uint16)):
        Image.fromarray(np.full((10, 10), value, dtype)).save(tmp_path / name)
        with Image.open(tmp_path / name) as im:
            assert im.mode == ("I;16" if dtype == np.uint16 else "I")
        assert torch.equal(load_image(tmp_path / name, 4), half), name
    # negative values read as 0, the others by the range of the rest (one pixel of -1 had left
    # 1000 unscaled: white)
    signed, unsigned = np.full((16, 16), 1000, np.int32), np.full((16, 16), 1000, np.uint16)
    signed[0, 0], unsigned[0, 0] = -1, 0
    Image.fromarray(signed).save(tmp_path / "signed.tiff")
    Image.fromarray(unsigned).save(tmp_path / "unsigned.tiff")
    assert torch.equal(load_image(tmp_path / "signed.tiff", 16), load_image(tmp_path / "unsigned.tiff", 16))
    # a gradient keeps its levels (not one value)
    ramp = np.tile(np.arange(0, 256, 16, dtype=np.int32), (16, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp.tiff")
    Image.fromarray(ramp.astype(np.uint8)).save(tmp_path / "ramp.png")
    assert torch.equal(load_image(tmp_path / "ramp.tiff", 16), load_image(tmp_path / "ramp.png", 16))


def test_worker_processes_load_the_same_batches_and_report_a_bad_image_in_one_line(office, tmp_path):
    """``workers`` > 0 decodes images in DataLoader worker processes: the same batches (so the
    same numbers) as in the main process, and a corrupt image is still a one-line DataError,
    in training and in evaluation."""
    from dalib.runner import RunConfig, run

    def config(workers):
        return RunConfig(method="source_only", data=str(office), src="amazon", tgt="webcam", arch="resnet18",
                         image_size=32, steps=4, batch_size=2, workers=workers, log_every=1, eval_every=2,
                         checkpoint_every=0)  # an evaluation mid-run loads through workers too

    main = run(config(0), None, progress_bar=False)
    pooled = run(config(1), None, progress_bar=False)
    assert main.history == pooled.history
    assert (main.source_accuracy, main.target_accuracy) == (pooled.source_accuracy, pooled.target_accuracy)
    (office / "webcam" / "mug" / "m1.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError) as exc:
        run(config(1), None, progress_bar=False)
    assert str(exc.value).startswith("cannot read image: ") and "\n" not in str(exc.value)


def test_an_image_folder_resnet_run_records_the_versions_of_pillow_and_torchvision(office, tmp_path):
    """PIL decodes and resizes every image, torchvision builds the ResNet: both change numbers."""
    from importlib.metadata import version

    from dalib.runner import RunConfig, run

    run(RunConfig(method="source_only", data=str(office), src="amazon", tgt="webcam", arch="resnet18", image_size=32,
                  steps=2, batch_size=2), tmp_path / "r", progress_bar=False)
    versions = json.loads((tmp_path / "r" / "result.json").read_text())["versions"]
    assert versions["pillow"] == version("pillow") and versions["torchvision"] == version("torchvision")


def test_worker_processes_are_given_batches_as_they_go_not_every_step_first(office):
    """With workers, the loader's batches of indices are drawn as it asks for them: a list of
    every step's, made before the first step, had grown with steps x batch size (a long run on
    a shared node ran out of memory before training)."""
    from dalib.runner import _Prefetcher, _Stream

    class Counting(_Stream):
        drawn = 0

        def indices(self, step):
            Counting.drawn += 1
            return super().indices(step)

    domain = load_domain("image-folder", "amazon", data_dir=office, image_size=32)
    loader = _Prefetcher(domain, Counting(len(domain), 2, seed=0), 0, 10**9, workers=1)
    try:
        batches = [next(loader) for _ in range(3)]
    finally:
        loader.close()
    assert [tuple(x.shape) for x, _ in batches] == [(2, 3, 32, 32)] * 3
    assert Counting.drawn < 20  # the three taken and the few the worker loads ahead


def test_a_run_stopped_by_an_error_stops_its_loader_workers_even_while_its_traceback_is_kept(office):
    """A notebook keeps the last traceback (sys.last_traceback), and with it the run's frame:
    its DataLoader workers lived on with it (processes, descriptors, threads)."""
    import multiprocessing

    from dalib.runner import RunConfig, run

    class Stop(Exception):
        pass

    def stop(step, logs):
        raise Stop

    config = RunConfig(method="source_only", data=str(office), src="amazon", tgt="webcam", arch="resnet18",
                       image_size=32, steps=6, batch_size=2, workers=2, log_every=1, checkpoint_every=0)
    before = set(multiprocessing.active_children())
    with pytest.raises(Stop) as stopped:
        run(config, None, progress_bar=False, on_step=stop)
    assert stopped.value.__traceback__ is not None  # kept, as the notebook keeps it
    assert not set(multiprocessing.active_children()) - before  # (an earlier test's may have ended since)
    # an image a worker cannot read: torch's error, which holds the workers, is not kept with the one-line one
    (office / "webcam" / "mug" / "m1.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="cannot read image") as failed:
        run(config, None, progress_bar=False)
    assert failed.value.__context__ is None and failed.value.__traceback__ is not None
    assert not set(multiprocessing.active_children()) - before


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_a_class_folder_missing_from_a_domain_is_warned_about(tmp_path):
    """``Cat`` in the source and ``cat`` in the target are two classes: the target's cats would
    be scored against a class the source never had. Loading says so."""
    _image(tmp_path / "src" / "Cat" / "a.png", (1, 2, 3))
    _image(tmp_path / "src" / "dog" / "a.png", (1, 2, 3))
    _image(tmp_path / "tgt" / "cat" / "a.png", (1, 2, 3))
    _image(tmp_path / "tgt" / "dog" / "a.png", (1, 2, 3))
    with pytest.warns(RuntimeWarning, match=r"src has no folder for 1 of the 3 classes .*\(cat\); .*case included"):
        load_domain("image-folder", "src", data_dir=tmp_path, image_size=8)
    _image(tmp_path / "src" / "cat" / "a.png", (1, 2, 3))
    _image(tmp_path / "tgt" / "Cat" / "a.png", (1, 2, 3))
    load_domain("image-folder", "src", data_dir=tmp_path, image_size=8)  # every class everywhere: no warning


def test_the_exif_orientation_is_applied(tmp_path):
    """A phone photo stored sideways with an orientation tag loads as a viewer shows it."""
    from dalib.data.image_folder import load_image

    pixels = np.zeros((20, 40, 3), dtype=np.uint8)  # 40 wide, 20 high: white on the left half
    pixels[:, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    path = tmp_path / "photo.jpg"
    Image.fromarray(pixels).save(path, exif=exif.tobytes())
    x = load_image(path, 16)  # (3, 16, 16), normalised
    top, bottom = x[:, :8].mean(), x[:, 8:].mean()
    assert top > bottom + 1.0  # displayed: the white half is on top


def test_a_domain_of_loose_images_is_unlabelled(office):
    for name, color in (("z.png", (9, 9, 9)), ("a.jpg", (200, 0, 0))):
        _image(office / "photos" / name, color)
    (office / "photos" / "notes.txt").write_text("not an image")
    d = load_domain("image-folder", "photos", data_dir=office, image_size=16)
    # the classes are the labelled domains', so the labels agree with theirs
    assert d.classes == ["bike", "calculator", "mug"] and d.num_classes == 3
    assert [p.name for p, _ in d.dataset.samples] == ["a.jpg", "z.png"]
    assert d.dataset.targets == [-1, -1] and d.known_labels().tolist() == [-1, -1]
    x, y = d.dataset[0]
    assert x.shape == (3, 16, 16) and y == -1
    assert load_domain("image-folder", "amazon", data_dir=office).known_labels().tolist() == [0, 0, 2]


def test_class_folders_and_loose_images_in_one_domain_are_refused(office):
    _image(office / "amazon" / "stray.png", (1, 2, 3))
    with pytest.raises(DataError, match=r"holds both class folders \(bike, \.\.\.\) and images \(stray.png, \.\.\.\)"):
        load_domain("image-folder", "amazon", data_dir=office)


def test_a_folder_of_unlabelled_domains_alone_loads_them_without_classes(tmp_path):
    # new photos in a folder of their own: no classes here (a trained network gives its own, as dalib eval does)
    _image(tmp_path / "new" / "batch2" / "x.png", (1, 2, 3))
    d = load_domain("image-folder", "batch2", data_dir=tmp_path / "new")
    assert d.classes == [] and d.num_classes == 0 and d.known_labels().tolist() == [-1]


def test_class_folders_that_share_no_name_with_the_other_domains_are_refused(office):
    _image(office / "phone" / "2024-06" / "IMG_1.jpg", (1, 2, 3))  # dated export folders, not classes
    with pytest.raises(DataError, match=r"class folders of .*phone \(2024-06\) share no name with those of the other "
                                        r"domains of .* \(amazon: bike, mug; webcam: bike, calculator, mug\) .*"
                                        r"an unlabelled domain keeps its images directly in its folder"):
        load_domain("image-folder", "phone", data_dir=office)
    # amazon shares its classes with webcam: it loads, with the dated folder among the classes it lacks
    assert "2024-06" in load_domain("image-folder", "amazon", data_dir=office).classes


def test_files_that_are_not_images_are_skipped_with_a_warning(tmp_path):
    _image(tmp_path / "d" / "src" / "cat" / "a.png", (1, 2, 3))
    _image(tmp_path / "d" / "tgt" / "b.jpg", (1, 2, 3))
    (tmp_path / "d" / "tgt" / "IMG_2.HEIC").write_bytes(b"heic")
    with pytest.warns(RuntimeWarning, match=r"skipped 1 file\(s\) that are not images by their extension \(IMG_2.HEIC\)"):
        d = load_domain("image-folder", "tgt", data_dir=tmp_path / "d")
    assert len(d) == 1
    (tmp_path / "d" / "tgt" / "b.jpg").unlink()
    with pytest.raises(DataError, match=r"no class folders and no images in .*skipped 1 file\(s\) of other types \(IMG_2.HEIC\)"):
        load_domain("image-folder", "tgt", data_dir=tmp_path / "d")


def test_a_data_folder_is_only_for_a_dataset_that_reads_one(tmp_path):
    with pytest.raises(DataError, match=r"dataset digits reads no data folder, but one was given"):
        load_domain("digits", "mnist", data_dir=tmp_path)



def test_known_labels_are_none_when_a_dataset_holds_other_targets():
    from torch.utils.data import Dataset

    from dalib.data import Domain

    class Named(Dataset):
        targets = ["cat", "dog"]  # a plugin's dataset: class names, not indices

        def __len__(self):
            return 2

        def __getitem__(self, i):
            return torch.zeros(3), i

    d = Domain(name="n", dataset=Named(), num_classes=2, input_shape=(3,), classes=["cat", "dog"])
    assert d.known_labels() is None


def test_the_office31_archive_layout_is_read_through_its_images_folders(tmp_path):
    """The Office-31 archive files each domain's classes under DOMAIN/images/CLASS/IMAGE."""
    _image(tmp_path / "amazon" / "images" / "bike" / "frame_0001.jpg", (1, 2, 3))
    _image(tmp_path / "amazon" / "images" / "mug" / "frame_0001.jpg", (1, 2, 3))
    _image(tmp_path / "webcam" / "images" / "mug" / "frame_0001.jpg", (1, 2, 3))
    (tmp_path / "webcam" / ".DS_Store").write_bytes(b"")  # hidden: still nothing but images/
    with pytest.warns(RuntimeWarning, match=r"webcam/images has no folder for 1 of the 2 classes .*\(bike\)"):
        w = load_domain("image-folder", "webcam", data_dir=tmp_path, image_size=8)
    assert w.classes == ["bike", "mug"] and w.dataset.targets == [1]
    assert w.origin == str(tmp_path / "webcam")  # the domain folder: predictions name images/mug/...
    a = load_domain("image-folder", "amazon", data_dir=tmp_path, image_size=8)
    assert a.classes == ["bike", "mug"] and a.dataset.targets == [0, 1]
    # beside anything else, images/ is a class folder like any other
    _image(tmp_path / "amazon" / "bike" / "b.png", (1, 2, 3))
    with pytest.raises(DataError, match=r"class folders of .*amazon \(bike, images\) share no name"):
        load_domain("image-folder", "amazon", data_dir=tmp_path, image_size=8)


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_images_in_sub_folders_of_a_class_folder_belong_to_the_class(tmp_path):
    """As torchvision's ImageFolder reads them: at any depth, in the order of their paths,
    hidden folders skipped and a link back up followed once."""
    _image(tmp_path / "src" / "cat" / "b.png", (1, 2, 3))
    _image(tmp_path / "src" / "cat" / "2024" / "a.png", (1, 2, 3))
    _image(tmp_path / "src" / "cat" / "2024" / "06" / "c.png", (1, 2, 3))
    _image(tmp_path / "src" / "cat" / ".thumbs" / "t.png", (1, 2, 3))
    _image(tmp_path / "src" / "dog" / "old" / "d.png", (1, 2, 3))  # a class with nested images only
    (tmp_path / "src" / "cat" / "2024" / "loop").symlink_to(tmp_path / "src" / "cat")
    d = load_domain("image-folder", "src", data_dir=tmp_path, image_size=8)
    names = [p.relative_to(tmp_path / "src").as_posix() for p, _ in d.dataset.samples]
    assert names == ["cat/2024/06/c.png", "cat/2024/a.png", "cat/b.png", "dog/old/d.png"]
    assert d.dataset.targets == [0, 0, 0, 1]


def test_links_that_lead_nowhere_are_skipped_with_a_warning(tmp_path):
    _image(tmp_path / "src" / "cat" / "a.png", (1, 2, 3))
    (tmp_path / "src" / "cat" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.warns(RuntimeWarning, match=r"skipped 1 link\(s\) that lead to no file \(cat/gone.png\)"):
        d = load_domain("image-folder", "src", data_dir=tmp_path, image_size=8)
    assert [p.name for p, _ in d.dataset.samples] == ["a.png"]


def test_32_bit_float_images_keep_their_grey_level(tmp_path):
    """A float TIFF in 0..1 (as scientific cameras write them) loads as the 8-bit image of the
    same grey, not black; one in 0..255 loads as its values say; NaN pixels are refused."""
    from dalib.data.image_folder import load_image

    Image.fromarray(np.full((10, 10), 128, np.uint8)).save(tmp_path / "u8.png")
    Image.fromarray(np.full((10, 10), 128 / 255, np.float32)).save(tmp_path / "unit.tif")
    Image.fromarray(np.full((10, 10), 128.0, np.float32)).save(tmp_path / "wide.tif")
    with Image.open(tmp_path / "unit.tif") as im:
        assert im.mode == "F"  # what PIL makes of it
    expected = load_image(tmp_path / "u8.png", 4)
    assert torch.equal(load_image(tmp_path / "unit.tif", 4), expected)
    assert torch.equal(load_image(tmp_path / "wide.tif", 4), expected)
    Image.fromarray(np.full((10, 10), np.nan, np.float32)).save(tmp_path / "nan.tif")
    with pytest.raises(DataError, match=r"cannot read image: .*nan.tif .*NaN or infinite"):
        load_image(tmp_path / "nan.tif", 4)


def test_images_are_resized_bilinearly(tmp_path):
    """A 2-pixel ramp (0, 255) widened to 4 pixels reads 0, 64, 191, 255: the triangle filter's
    weights ¾ and ¼ at the inner pixels (centres at 0.25 and 0.75 of the source's pixel
    spacing), rounded to 8 bits. Nearest-neighbour resizing would give 0, 0, 255, 255."""
    from dalib.data.image_folder import load_image

    Image.fromarray(np.array([[0, 255], [0, 255]], np.uint8)).save(tmp_path / "ramp.png")
    x = load_image(tmp_path / "ramp.png", 4)  # (3, 4, 4)
    grey = x * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    expected = torch.tensor([0, 64, 191, 255], dtype=torch.float32) / 255
    assert torch.allclose(grey, expected.expand(3, 4, 4), atol=1e-6)


def _two_class_run(tmp_path, data: Path, out: Path, classes=("cat", "dog"), data_as_given: str | None = None):
    import dalib

    for domain in ("src", "tgt"):
        for k, name in enumerate(classes):
            for i in range(2):
                _image(data / domain / name / f"{i}.png", (60 * k + 20 * i, 100, 200 - 50 * k))
    cfg = dalib.RunConfig(method="source_only", dataset="image-folder", data=data_as_given or str(data), src="src",
                          tgt="tgt", image_size=16, steps=4, batch_size=2, checkpoint_every=2, device="cpu")
    return dalib.run(cfg, out, progress_bar=False)


def test_eval_of_a_folder_ignores_the_classes_only_a_sibling_domain_has(tmp_path):
    """A domain's class list is the union over its folder's domains; a class the network does not
    know stops the evaluation only where the domain itself holds it."""
    from click.testing import CliRunner

    from dalib.cli import cli

    _two_class_run(tmp_path, tmp_path / "data", tmp_path / "run")
    new = tmp_path / "new"
    _image(new / "test" / "cat" / "0.png", (20, 100, 200))
    _image(new / "test" / "dog" / "0.png", (80, 100, 150))
    _image(new / "other" / "cat" / "0.png", (20, 100, 200))
    _image(new / "other" / "bird" / "0.png", (0, 0, 0))
    _image(new / "batch2" / "0.png", (0, 0, 0))  # loose photos: unlabelled
    res = CliRunner().invoke(cli, ["eval", str(tmp_path / "run"), "--data", str(new), "--domain", "test"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["eval", str(tmp_path / "run"), "--data", str(new), "--domain", "batch2",
                                   "--predictions", str(tmp_path / "p.csv")])
    assert res.exit_code == 0, res.output
    assert len((tmp_path / "p.csv").read_text().strip().splitlines()) == 2  # a header and the one photo
    res = CliRunner().invoke(cli, ["eval", str(tmp_path / "run"), "--data", str(new), "--domain", "other"])
    assert res.exit_code == 2 and "does not know: bird" in res.stderr


def test_a_resume_on_a_folder_of_other_classes_is_refused(tmp_path):
    """The data folder may move, but a folder of other classes would relabel the trained head."""
    import dalib
    from dalib.errors import CheckpointError

    _two_class_run(tmp_path, tmp_path / "data", tmp_path / "run")
    (tmp_path / "run" / "result.json").unlink()  # as if killed after its last checkpoint
    cfg = dalib.RunConfig(method="source_only", dataset="image-folder", data=str(tmp_path / "other"), src="src",
                          tgt="tgt", image_size=16, steps=4, batch_size=2, checkpoint_every=2, device="cpu")
    for domain in ("src", "tgt"):
        for k, name in enumerate(("bird", "fish")):
            for i in range(2):
                _image(tmp_path / "other" / domain / name / f"{i}.png", (60 * k + 20 * i, 100, 50))
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    with pytest.raises(CheckpointError, match=r"other classes \(cat, dog; this run's source has bird, fish\)"):
        dalib.run(cfg, tmp_path / "run", resume=True, progress_bar=False)
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before


def test_a_resume_on_a_folder_whose_images_changed_in_number_is_refused(tmp_path):
    """Images added since the checkpoint: the resume had drawn other batches than the run it
    continued, without a word (with --holdout it was refused; without, only the classes and
    the input shape were compared)."""
    import dalib
    from dalib.errors import CheckpointError
    from tests._support.interrupt import killed_at

    for domain in ("src", "tgt"):
        for k, name in enumerate(("cat", "dog")):
            for i in range(2):
                _image(tmp_path / "data" / domain / name / f"{i}.png", (60 * k + 20 * i, 100, 200 - 50 * k))
    cfg = dalib.RunConfig(method="source_only", dataset="image-folder", data=str(tmp_path / "data"), src="src",
                          tgt="tgt", image_size=16, steps=6, batch_size=2, checkpoint_every=2, device="cpu")
    killed_at(cfg, tmp_path / "run", 3)  # its checkpoint: step 2 of 6
    _image(tmp_path / "data" / "src" / "cat" / "2.png", (10, 100, 200))
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    with pytest.raises(CheckpointError, match=r"the data has changed since the checkpoint in .* was written \(the "
                                              r"source had 4, has 5 samples\): the run would draw other batches"):
        dalib.run(cfg, tmp_path / "run", resume=True, progress_bar=False)
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before
    (tmp_path / "data" / "src" / "cat" / "2.png").unlink()  # as it was: it resumes
    assert dalib.run(cfg, tmp_path / "run", resume=True, progress_bar=False).steps == 6


def test_a_resume_keeps_the_checkpoints_classes_when_the_folder_lost_one(tmp_path):
    """A class that only an unread domain filed, whose images are gone since (or an empty class
    folder there, a class for runs begun before such folders named none): the resume numbers
    the data as the trained head does, by name, instead of refusing the run's own data."""
    import json

    import dalib

    zebra = tmp_path / "data" / "extra" / "zebra" / "0.png"
    _image(zebra, (0, 0, 0))
    with pytest.warns(RuntimeWarning, match="has no folder for 1 of the 3 classes"):
        first = _two_class_run(tmp_path, tmp_path / "data", tmp_path / "run")
    (tmp_path / "run" / "result.json").unlink()  # as if killed after its last checkpoint
    zebra.unlink()
    cfg = dalib.RunConfig(method="source_only", dataset="image-folder", data=str(tmp_path / "data"), src="src",
                          tgt="tgt", image_size=16, steps=4, batch_size=2, checkpoint_every=2, device="cpu")
    again = dalib.run(cfg, tmp_path / "run", resume=True, progress_bar=False)
    assert again.target_accuracy == first.target_accuracy
    assert dalib.load_model(tmp_path / "run").classes == ["cat", "dog", "zebra"]
    assert json.loads((tmp_path / "run" / "result.json").read_text())["target_accuracy"] == first.target_accuracy


def test_a_resume_of_a_finished_run_gives_back_its_own_numbers_after_the_data_changed(tmp_path, monkeypatch):
    """A finished run's --resume printed accuracies re-scored on the data as it is now (images
    added to the target), above a line naming result.json, which kept the run's own. It now
    gives back result.json's numbers, without a pass over the data."""
    import json

    import dalib
    import dalib.runner

    first = _two_class_run(tmp_path, tmp_path / "data", tmp_path / "run")
    for i in range(3):  # images of another look, filed under one class
        _image(tmp_path / "data" / "tgt" / "cat" / f"new{i}.png", (255 - 40 * i, 0, 0))
    cfg = dalib.RunConfig(method="source_only", dataset="image-folder", data=str(tmp_path / "data"), src="src",
                          tgt="tgt", image_size=16, steps=4, batch_size=2, checkpoint_every=2, device="cpu")

    def no_pass(*args, **kwargs):
        raise AssertionError("a finished run was scored again")

    monkeypatch.setattr(dalib.runner, "_forward_batches", no_pass)
    again = dalib.run(cfg, tmp_path / "run", resume=True, progress_bar=False)
    stored = json.loads((tmp_path / "run" / "result.json").read_text())
    assert (again.source_accuracy, again.target_accuracy) == (first.source_accuracy, first.target_accuracy)
    assert (stored["source_accuracy"], stored["target_accuracy"]) == (first.source_accuracy, first.target_accuracy)


def test_eval_loads_an_image_folder_with_workers_and_batches_of_any_size(tmp_path):
    """`dalib eval --workers N --batch-size B` scores and predicts the same as the defaults
    (one process, 512 per pass); bad values are one line with status 2."""
    from click.testing import CliRunner

    from dalib.cli import cli

    _two_class_run(tmp_path, tmp_path / "data", tmp_path / "run")
    runner = CliRunner()
    base = runner.invoke(cli, ["eval", str(tmp_path / "run"), "--predictions", str(tmp_path / "a.csv")])
    assert base.exit_code == 0, base.output
    res = runner.invoke(cli, ["eval", str(tmp_path / "run"), "--workers", "2", "--batch-size", "3",
                              "--predictions", str(tmp_path / "b.csv")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "b.csv").read_text() == (tmp_path / "a.csv").read_text()
    assert res.output.replace("b.csv", "a.csv") == base.output
    for option, value in (("--workers", "-1"), ("--batch-size", "0"), ("--data", ""), ("--domain", " "),
                          ("--dataset", ""), ("--data-root", "")):  # "" had meant the run's own value
        res = runner.invoke(cli, ["eval", str(tmp_path / "run"), option, value])
        assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1, res.output
        assert option in res.stderr


def test_class_folders_without_images_in_other_domains_name_no_class(tmp_path):
    """An unzipped macOS archive's __MACOSX (hidden ._ files only) made its domain folders
    classes, and an empty class folder of an unused domain one more: outputs never trained."""
    import dalib

    data = tmp_path / "data"
    (data / "extra" / "zebra").mkdir(parents=True)
    for domain in ("src", "tgt"):
        for name in ("cat", "dog"):
            hidden = data / "__MACOSX" / domain / name / "._0.png"
            hidden.parent.mkdir(parents=True)
            hidden.write_bytes(b"\0\5\26\7")  # AppleDouble metadata, not an image
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (the source and target were also told they lack 3 classes)
        _two_class_run(tmp_path, data, tmp_path / "run")
    assert dalib.load_model(tmp_path / "run").classes == ["cat", "dog"]
    (data / "extra" / "zebra" / "0.png").parent.mkdir(exist_ok=True)
    _image(data / "extra" / "zebra" / "0.png", (0, 0, 0))  # a class with an image is one
    with pytest.warns(RuntimeWarning, match="has no folder for 1 of the 3 classes"):
        _two_class_run(tmp_path, data, tmp_path / "run2")
    assert dalib.load_model(tmp_path / "run2").classes == ["cat", "dog", "zebra"]


def test_the_shallow_form_of_an_image_folder_names_the_domain_it_cannot_hold(tmp_path):
    import dalib
    from dalib.errors import ConfigError

    _two_class_run(tmp_path, tmp_path / "data", tmp_path / "run")
    cfg = dalib.RunConfig(method="coral", mode="shallow", dataset="image-folder", data=str(tmp_path / "data"),
                          src="src", tgt="tgt", image_size=16)
    with pytest.raises(ConfigError, match=r"^the shallow form needs in-memory features, and domain src is read sample "
                                          r"by sample \(an image folder, a dataset of its own\): train with --mode deep$"):
        dalib.run(cfg, None, progress_bar=False)


def test_the_images_folder_is_read_through_with_a_file_beside_it(tmp_path):
    """A README beside DOMAIN/images/ does not make ``images`` the domain's one class (every
    class merged into it: a run reported 100% on both domains)."""
    for domain in ("amazon", "webcam"):
        for k, name in enumerate(("bike", "mug")):
            _image(tmp_path / domain / "images" / name / "0.jpg", (100 * k, 2, 3))
        (tmp_path / domain / "README.txt").write_text("Office-31")
    d = load_domain("image-folder", "amazon", data_dir=tmp_path, image_size=8)
    assert d.classes == ["bike", "mug"] and d.dataset.targets == [0, 1]
    # an image beside it keeps the folder a class folder: loose images and classes are refused together
    _image(tmp_path / "webcam" / "loose.png", (1, 2, 3))
    with pytest.raises(DataError, match="webcam"):
        load_domain("image-folder", "webcam", data_dir=tmp_path, image_size=8)


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_a_link_to_a_folder_above_a_class_is_not_read_into_the_class(tmp_path):
    """A link up to the data folder would file every other class's and domain's images under
    this class's label."""
    for domain in ("src", "tgt"):
        for k, name in enumerate(("a", "b")):
            _image(tmp_path / domain / name / "0.png", (100 * k, 2, 3))
    (tmp_path / "src" / "a" / "up").symlink_to(tmp_path)
    (tmp_path / "src" / "a" / "domain").symlink_to(tmp_path / "src")
    d = load_domain("image-folder", "src", data_dir=tmp_path, image_size=8)
    assert [(p.relative_to(tmp_path).as_posix(), y) for p, y in d.dataset.samples] == [("src/a/0.png", 0), ("src/b/0.png", 1)]


def test_a_source_of_one_class_is_refused(tmp_path):
    import dalib

    for domain in ("src", "tgt"):
        _image(tmp_path / "data" / domain / "cat" / "0.png", (1, 2, 3))
    cfg = dalib.RunConfig(method="source_only", dataset="image-folder", data=str(tmp_path / "data"), src="src",
                          tgt="tgt", image_size=8, steps=2, batch_size=1, device="cpu")
    with pytest.raises(DataError, match=r"the source domain 'src' names 1 class\(es\) \(cat\): a classifier needs at least 2"):
        dalib.run(cfg, tmp_path / "run", progress_bar=False)
    assert not (tmp_path / "run").exists()


def test_an_image_that_fails_in_the_final_scoring_costs_a_resume_not_the_training(tmp_path):
    """source_only never reads the target while it trains: a bad target image shows in the
    final scoring, after the last step. The trained network is saved first."""
    import dalib

    data, out = tmp_path / "data", tmp_path / "run"
    _two_class_run(tmp_path, data, tmp_path / "good")
    bad = data / "tgt" / "dog" / "zz.png"
    bad.write_bytes(b"not an image")
    cfg = dalib.RunConfig(method="source_only", dataset="image-folder", data=str(data), src="src", tgt="tgt",
                          image_size=16, steps=4, batch_size=2, checkpoint_every=0, log_every=2, device="cpu")
    with pytest.raises(DataError, match=rf"cannot read image: .*zz.png .*\(the trained network is saved in {out}: "
                                        r"fix the data, then --resume"):
        dalib.run(cfg, out, progress_bar=False)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 4 and not (out / "result.json").exists()
    bad.unlink()
    resumed = dalib.run(cfg, out, resume=True, progress_bar=False)
    again = dalib.run(cfg, tmp_path / "again", progress_bar=False)
    assert (resumed.source_accuracy, resumed.target_accuracy) == (again.source_accuracy, again.target_accuracy)
    assert (out / "result.json").exists()
    # the last step's metrics line, held back for the scoring that failed, is written by the resume
    assert resumed.history == again.history and resumed.history[-1]["step"] == 4 and "loss/total" in resumed.history[-1]
    assert (out / "metrics.jsonl").read_text() == (tmp_path / "again" / "metrics.jsonl").read_text()


def test_a_stop_sent_to_the_whole_job_finishes_the_step_with_the_workers_and_saves_it(office, tmp_path, monkeypatch):
    """A terminal's Ctrl-C and a scheduler's SIGTERM reach every process of the job, the
    loader's workers too. The workers ignore them: the run finishes the step whose batch they
    load, saves it and stops them itself. (Stopped first, they had failed the run, or the
    checkpoint it was writing, with torch's "DataLoader worker is killed by signal".)"""
    import multiprocessing
    import os
    import signal

    from dalib import runner
    from dalib.runner import RunConfig, load_checkpoint, run

    asked = {"n": 0}
    original = runner._Prefetcher.__next__

    def next_batch(self):
        asked["n"] += 1
        if asked["n"] == 4:  # steps 1 to 3 done: the stop comes while the run waits for step 4's batch
            for worker in self._it._workers:
                os.kill(worker.pid, signal.SIGTERM)
                os.kill(worker.pid, signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # (SIGTERM would end pytest: the command line takes it so)
        return original(self)

    config = RunConfig(method="source_only", data=str(office), src="amazon", tgt="webcam", arch="resnet18",
                       image_size=32, steps=6, batch_size=2, workers=2, log_every=1, checkpoint_every=0)
    full = run(config, tmp_path / "full", progress_bar=False)
    monkeypatch.setattr(runner._Prefetcher, "__next__", next_batch)
    before = set(multiprocessing.active_children())
    with pytest.raises(KeyboardInterrupt) as caught:
        run(config, tmp_path / "run", progress_bar=False)
    assert caught.value.saved_step == 4 and load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 4
    assert not set(multiprocessing.active_children()) - before
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    monkeypatch.setattr(runner._Prefetcher, "__next__", original)
    resumed = run(config, tmp_path / "run", resume=True, progress_bar=False)
    assert resumed.source_accuracy == full.source_accuracy
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == (tmp_path / "full" / "metrics.jsonl").read_text()


def test_a_loader_worker_stuck_in_a_read_is_killed_when_the_loader_stops():
    """The workers ignore SIGTERM (above), which torch's shutdown sends to one that does not
    stop when asked: dalib kills it."""
    import time

    from dalib.runner import _loader, _stop_workers

    class Hangs(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            time.sleep(3600)

    it = iter(_loader(Hangs(), batch_size=1, num_workers=1))
    time.sleep(1.0)  # the worker is in its first read
    t0 = time.monotonic()
    _stop_workers(it)
    assert not any(w.is_alive() for w in it._workers) and time.monotonic() - t0 < 30

    # on a Ctrl-C they are killed first: torch's shutdown would wait 5 s for each (eval --workers
    # had taken 11 s to stop on a stuck read)
    it = iter(_loader(Hangs(), batch_size=1, num_workers=2))
    time.sleep(1.0)
    alive_at_shutdown = []
    shutdown = it._shutdown_workers

    def watched():
        alive_at_shutdown.extend(w.is_alive() for w in it._workers)
        shutdown()

    it._shutdown_workers = watched
    with pytest.raises(KeyboardInterrupt):
        try:
            raise KeyboardInterrupt
        finally:
            _stop_workers(it)
    assert alive_at_shutdown == [False, False] and not any(w.is_alive() for w in it._workers)


@pytest.mark.parametrize("unreadable", ["amazon/mug", "amazon/bike/2024", "webcam", "."], ids=["class", "nested", "domain", "data"])
def test_a_folder_that_cannot_be_listed_is_an_error_not_left_out(office, monkeypatch, unreadable):
    """os.walk passes over a folder it may not list: a class folder of mode 000 was "empty", and
    a sub-folder of a class left its images out of training, unsaid; a domain or data folder
    gave pathlib's bare "Permission denied: PATH". Played by the errors chmod makes (as root,
    chmod would not stop us)."""
    import os

    _image(office / "amazon" / "bike" / "2024" / "b3.png", (9, 9, 9))
    denied = os.path.normpath(office / unreadable)
    real_scandir, real_listdir = os.scandir, os.listdir

    def refuse(real):
        def listing(path="."):
            if os.path.normpath(os.fspath(path)) == denied:
                raise PermissionError(13, "Permission denied", os.fspath(path))
            return real(path)
        return listing

    monkeypatch.setattr(os, "scandir", refuse(real_scandir))
    monkeypatch.setattr(os, "listdir", refuse(real_listdir))
    with pytest.raises(DataError) as exc:
        load_domain("image-folder", "amazon", data_dir=office, image_size=8)
    assert str(exc.value) == f"cannot list folder {office / unreadable} (dataset image-folder): Permission denied"


def test_a_domain_named_in_either_unicode_form_is_found(tmp_path):
    """A folder made on macOS (or unpacked from an archive made there) may spell "é" as "e" and
    a combining accent: "café" typed was an unknown domain beside a "café" that looked the same."""
    import unicodedata

    nfd, nfc = (unicodedata.normalize(form, "café") for form in ("NFD", "NFC"))
    assert nfd != nfc
    root = tmp_path / "data"
    _image(root / nfd / "a" / "1.png", (255, 0, 0))
    _image(root / nfd / "b" / "2.png", (0, 255, 0))
    for typed in (nfc, nfd, nfc.upper()):
        found = load_domain("image-folder", typed, data_dir=root, image_size=8)
        assert found.name == nfd and found.classes == ["a", "b"]  # the folder's own name


def test_class_folders_named_by_numbers_are_matched_by_name_at_eval(tmp_path):
    """A run on class folders 0, 1, 2 and a held-out folder of classes 1, 2, 3: eval names the
    class the network does not know, and scores nothing by position (folder 1 as class 0)."""
    from click.testing import CliRunner

    from dalib.cli import cli
    from dalib.runner import RunConfig, run

    for domain in ("a", "b"):
        for c in range(3):
            _image(tmp_path / "train" / domain / str(c) / "i.png", (80 * c, 0, 0))
    for c in (1, 2, 3):
        _image(tmp_path / "held" / "x" / str(c) / "i.png", (80 * c, 0, 0))
    run(RunConfig(method="source_only", dataset="image-folder", data=str(tmp_path / "train"), src="a", tgt="b",
                  steps=2, batch_size=3, image_size=8), tmp_path / "run", progress_bar=False)
    res = CliRunner().invoke(cli, ["eval", str(tmp_path / "run"), "--data", str(tmp_path / "held"), "--domain", "x"])
    assert res.exit_code == 2, res.output
    assert res.stderr.strip() == "dalib: error: domain x has 1 class(es) the network does not know: 3 (it knows 0, 1, 2)"


def test_a_runs_folder_warnings_name_the_callers_line(tmp_path):
    """The image folder's warnings (a stray file, a missing class folder, a broken link) reached
    through dalib.run named dalib's data registry, not the line of the user's notebook cell."""
    (tmp_path / "data" / "src" / "dog").mkdir(parents=True)
    (tmp_path / "data" / "src" / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / "data" / "src" / "dog" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    _image(tmp_path / "data" / "tgt" / "bird" / "0.png", (0, 0, 0))  # a class the source lacks
    with pytest.warns(RuntimeWarning) as caught:
        _two_class_run(tmp_path, tmp_path / "data", None)
    said = " ".join(str(w.message) for w in caught)
    assert "not images by their extension (dog/notes.txt)" in said and "link(s) that lead to no file" in said
    assert "has no folder for 1 of the 3 classes" in said
    assert [w.filename for w in caught] == [__file__] * len(caught)  # (this file's _two_class_run: the caller)


def test_a_run_scores_an_image_folder_in_batches_of_its_batch_size(tmp_path, monkeypatch):
    """--batch-size is what a CPU user lowers to fit in memory: the scoring after training (and
    --eval-every's) had put up to 512 full-size images through the network at once, several GB
    through a ResNet at 224 px after a run that trained in one."""
    import dalib
    import dalib.runner as runner

    seen = []
    forward = runner._forward_batches

    def spied(model, domain, device, batch_size, workers):
        seen.append((getattr(domain, "x", None) is None, batch_size))
        return forward(model, domain, device, batch_size, workers)

    monkeypatch.setattr(runner, "_forward_batches", spied)
    _two_class_run(tmp_path, tmp_path / "data", None)
    assert seen and set(seen) == {(True, 2)}  # (the run's batch_size), source and target
    seen.clear()  # with --eval-every's passes, and a holdout's scores
    dalib.run(dalib.RunConfig(method="source_only", dataset="image-folder", data=str(tmp_path / "data"), src="src",
                              tgt="tgt", image_size=16, steps=4, batch_size=2, eval_every=2, holdout=0.5), None,
              progress_bar=False)
    assert len(seen) == 3 + 3 and set(seen) == {(True, 2)}  # (step 2: three domains; the end: three)
    from click.testing import CliRunner

    from dalib.cli import cli

    _two_class_run(tmp_path, tmp_path / "data", tmp_path / "run")
    for extra, expected in (([], 64), (["--batch-size", "3"], 3)):  # dalib eval: 64, a run's default, not 512
        seen.clear()
        res = CliRunner().invoke(cli, ["eval", str(tmp_path / "run"), *extra])
        assert res.exit_code == 0 and seen == [(True, expected)], (res.output, seen)
    seen.clear()
    dalib.run(dalib.RunConfig(method="source_only", src="mnist", tgt="usps", steps=2, batch_size=16), None,
              progress_bar=False)
    assert set(seen) == {(False, 512)}  # in-memory data: as before
    # and a method's Context.embed (kmm's weights on the network's features, in prepare)
    from dalib.plugin import Unlabelled

    loader = torch.utils.data.DataLoader
    batches = []

    def counted(data, batch_size=1, **kw):  # the batches of each domain's embedding (the target's through Unlabelled)
        batches.append((isinstance(data, Unlabelled), batch_size))
        return loader(data, batch_size, **kw)

    monkeypatch.setattr(torch.utils.data, "DataLoader", counted)
    for data, expected in (("folder", 2), (None, 512)):
        batches.clear()
        dalib.run(dalib.RunConfig(method="kmm", dataset="image-folder" if data else "digits", src="src" if data else "mnist",
                                  tgt="tgt" if data else "usps", data=str(tmp_path / "data") if data else None,
                                  image_size=16, steps=2, batch_size=2, method_config={"features": "model"}), None,
                  progress_bar=False)
        assert {False, True} <= {target for target, _ in batches} and {b for _, b in batches} == {expected}, batches


def test_a_data_folder_reached_through_a_links_parent_is_recorded_as_read(tmp_path, monkeypatch):
    """`--data lnk/../imgs` reads the folder beside the link's target; result.json had recorded
    the one beside the link (a textual normalisation), where dalib eval then failed, or scored
    other images."""
    from dalib.data.registry import absolute_as_read

    (tmp_path / "far" / "x").mkdir(parents=True)
    (tmp_path / "work" / "imgs").mkdir(parents=True)  # a decoy where the text would lead
    (tmp_path / "work" / "lnk").symlink_to(tmp_path / "far" / "x")
    monkeypatch.chdir(tmp_path / "work")
    assert absolute_as_read("lnk/../imgs") == str(tmp_path / "far" / "imgs")
    assert absolute_as_read("lnk/../imgs/../imgs") == str(tmp_path / "far" / "imgs")
    assert absolute_as_read("lnk") == str(tmp_path / "work" / "lnk")  # a link alone is kept as named
    (tmp_path / "mnt" / "scripts").mkdir(parents=True)
    (tmp_path / "datalink").symlink_to(tmp_path / "mnt")  # and so is one the '..' does not climb out of
    assert absolute_as_read(tmp_path / "datalink" / "scripts" / ".." / "imgs") == str(tmp_path / "datalink" / "imgs")
    assert absolute_as_read("../datalink/./imgs") == str(tmp_path / "datalink" / "imgs")
    assert absolute_as_read("./a/b") == str(tmp_path / "work" / "a" / "b")
    assert absolute_as_read(tmp_path / "work" / "lnk" / ".." / "imgs") == str(tmp_path / "far" / "imgs")  # absolute too
    from dalib.data.registry import data_root_read

    assert data_root_read("office-caltech-surf", "lnk/../imgs") == str(tmp_path / "far" / "imgs")  # (result.json's data_root)
    _two_class_run(tmp_path, tmp_path / "far" / "imgs", tmp_path / "run", data_as_given="lnk/../imgs")
    assert json.loads((tmp_path / "run" / "result.json").read_text())["data"] == str(tmp_path / "far" / "imgs")


def test_a_standard_output_of_another_encoding_gets_escaped_text_and_no_broken_csv(tmp_path):
    """A Latin-1 or cp1252 standard output (a Windows-like console, PYTHONIOENCODING): dalib
    show, and the results line of a finished run, ended in a UnicodeEncodeError traceback (λ,
    →); eval --predictions - broke off its CSV at a class it could not write. Text is escaped
    now; the CSV, which is data, is refused in one line before it is written."""
    import os
    import subprocess
    import sys

    _two_class_run(tmp_path, tmp_path / "data", tmp_path / "run", classes=("chat_é", "λ"))
    env = {**os.environ, "PYTHONIOENCODING": "latin-1", "OMP_NUM_THREADS": "1"}
    show = subprocess.run([sys.executable, "-m", "dalib", "show", "coral"], capture_output=True, env=env, timeout=300)
    assert show.returncode == 0 and b"\\u03bb" in show.stdout, show.stderr
    csv = subprocess.run([sys.executable, "-m", "dalib", "eval", str(tmp_path / "run"), "--predictions", "-"],
                         capture_output=True, env=env, timeout=300)
    assert csv.returncode == 2 and csv.stdout == b"", csv.stderr
    assert csv.stderr.decode("latin-1").strip() == (
        "dalib: error: standard output's encoding (iso8859-1) cannot write 'λ', which the predictions hold: give "
        "--predictions FILE (written in UTF-8), or set PYTHONIOENCODING=utf-8").encode("latin-1", "backslashreplace"
                                                                                     ).decode("latin-1")
    env["PYTHONIOENCODING"] = "utf-8"
    csv = subprocess.run([sys.executable, "-m", "dalib", "eval", str(tmp_path / "run"), "--predictions", "-"],
                         capture_output=True, env=env, timeout=300)
    assert csv.returncode == 0 and "chat_é/0.png" in csv.stdout.decode("utf-8") and ",λ," in csv.stdout.decode("utf-8")
