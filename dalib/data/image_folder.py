"""Any folder laid out as DATA/DOMAIN/CLASS/IMAGE (the Office-31 layout), decoded lazily.

A class folder's images may sit in sub-folders of it (DATA/DOMAIN/CLASS/.../IMAGE). A domain
folder that holds nothing but a folder named ``images`` is read through it, as the Office-31
archive is laid out (DATA/DOMAIN/images/CLASS/IMAGE). A domain folder that holds its images
directly (DATA/DOMAIN/IMAGE, no class folders) is an unlabelled domain: every label is
:data:`~dalib.data.domain.UNLABELLED`. That is the usual form of a real target domain.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Iterator
from typing import Any
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from dalib.data.domain import UNLABELLED, Domain
from dalib.data.registry import DatasetInfo, LoadRequest, register_dataset
from dalib.errors import DataError, UnknownNameError, warn_outside_dalib

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMG_EXTENSIONS",
    "INFO",
    "ImageFolderDataset",
    "folder_classes",
    "folder_domains",
]

IMG_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

INFO = DatasetInfo(
    name="image-folder",
    description="a folder DATA/DOMAIN/CLASS/IMAGE (Office-31 layout; DATA/DOMAIN/IMAGE: unlabelled); pass it with --data",
    domains=(),
    kind="image",
    num_classes=None,
    needs="data_dir",
)


def _unlistable(exc: OSError) -> DataError:
    """The error for a folder of the data that cannot be read (its permissions, a failing
    disk): os.walk had passed over it in silence, leaving its images out of training."""
    return DataError(f"cannot list folder {exc.filename} (dataset image-folder): {exc.strerror or exc}")


def _raise_unlistable(exc: OSError) -> None:
    if not isinstance(exc, (FileNotFoundError, NotADirectoryError)):  # gone since it was listed: nothing to read
        raise _unlistable(exc) from exc


def _listing(path: Path) -> list[tuple[Path, bool]]:
    """The visible entries of ``path`` (hidden ones left out), each with whether it is a
    folder (links followed), sorted by name."""
    try:
        return sorted(((p, p.is_dir()) for p in path.iterdir() if not p.name.startswith(".")), key=lambda e: e[0].name)
    except OSError as exc:
        _raise_unlistable(exc)
        raise


def _subdirs(path: Path) -> list[Path]:
    return [p for p, is_dir in _listing(path) if is_dir]


WRAPPER = "images"  # the Office-31 archive files each domain's classes under DOMAIN/images/


def _domain_root(domain_dir: Path) -> Path:
    """The folder that holds a domain's class folders or images: ``domain_dir`` itself, or its
    ``images`` folder when that is its only folder and no image lies beside it (hidden
    entries aside; a README beside it does not make ``images`` a class)."""
    visible = _listing(domain_dir)
    folders = [p for p, is_dir in visible if is_dir]
    loose_images = [p for p, is_dir in visible if not is_dir and p.suffix.lower() in IMG_EXTENSIONS]
    if len(folders) == 1 and folders[0].name == WRAPPER and not loose_images:
        return folders[0]
    return domain_dir


def folder_domains(data_dir: Path) -> list[str]:
    """The domain names of an image folder: its sub-folders, sorted."""
    names = [p.name for p in _subdirs(Path(data_dir))]
    if not names:
        raise DataError(
            f"no domain folders in {data_dir} "
            "(dataset image-folder; expected DATA/DOMAIN/CLASS/IMAGE)"
        )
    return names


def _class_folders(data_dir: Path) -> dict[str, tuple[Path, list[str]]]:
    """Each domain's root (:func:`_domain_root`) and class-folder names (none for an
    unlabelled domain), domains sorted."""
    roots = {d: _domain_root(Path(data_dir) / d) for d in folder_domains(data_dir)}
    return {d: (root, [c.name for c in _subdirs(root)]) for d, root in roots.items()}


def _holding_images(by_domain: dict[str, tuple[Path, list[str]]]) -> dict[str, tuple[Path, list[str]]]:
    """:func:`_class_folders`' listing without the class folders that hold no image at any
    depth (an empty folder, the hidden files of an unzipped ``__MACOSX``), which would
    otherwise become classes that no sample has."""
    return {d: (root, [c for c in names if _holds_image(root / c)]) for d, (root, names) in by_domain.items()}


def _holds_image(folder: Path) -> bool:
    """Whether ``folder`` or one of its visible sub-folders (links followed once) holds a
    visible image file; stops at the first one."""
    return any(Path(f).suffix.lower() in IMG_EXTENSIONS for _, files in _visible_files(folder, nested=True) for f in files)


def _holds_folder(outer: str, inner: str) -> bool:
    """Whether the real path ``outer`` is a folder above the real path ``inner``."""
    return outer != inner and os.path.commonpath([outer, inner]) == outer


def _visible_files(folder: Path, *, nested: bool) -> Iterator[tuple[str, list[str]]]:
    """``(folder, its visible file names)`` for ``folder`` and, if ``nested``, its visible
    sub-folders at any depth, links followed, each real folder once (a link back up would
    loop), in sorted order."""
    seen: set[str] = set()
    start = os.path.realpath(folder)
    for top, dirs, files in os.walk(folder, onerror=_raise_unlistable, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        # a link to a folder that holds ``folder`` (the data folder, say) would bring the
        # images of every other class and domain under this one's label
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and not _holds_folder(os.path.realpath(os.path.join(top, d)), start)) if nested else []
        yield top, [f for f in files if not f.startswith(".")]


def folder_classes(data_dir: Path) -> list[str]:
    """The sorted union of class-folder names over all domains, so that labels agree
    between domains even when a domain lacks a class (an unlabelled domain has none);
    a class folder that holds no image counts for no domain."""
    return sorted({c for _, names in _holding_images(_class_folders(data_dir)).values() for c in names})


def _images(folder: Path, skipped: list[Path], broken: list[Path], *, nested: bool = False) -> list[Path]:
    """The image files inside ``folder`` (and, if ``nested``, in its sub-folders at any depth,
    links followed), sorted by their path below ``folder``; hidden files and folders are
    skipped. The other visible files are appended to ``skipped``, and links that lead nowhere
    to ``broken``."""
    found = [Path(top) / f for top, files in _visible_files(folder, nested=nested) for f in files]
    found.sort(key=lambda p: p.relative_to(folder).parts)
    files: list[Path] = []  # os.walk lists no folder among them: a link that leads nowhere is all to look for
    for p in found:
        (files if p.exists() else broken).append(p)
    skipped.extend(p for p in files if p.suffix.lower() not in IMG_EXTENSIONS)
    return [p for p in files if p.suffix.lower() in IMG_EXTENSIONS]


def _shown(names: list[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def _name(folder_name: str) -> str:
    """A domain folder's name as the command line's is compared with it: in Unicode's
    composed form (NFC). A folder made on macOS, or unpacked from an archive made there, may
    spell "é" as "e" and a combining accent, which looks the same and compares otherwise."""
    return unicodedata.normalize("NFC", folder_name)


def _resolve_folder(data_dir: Path, domain: str, names: list[str]) -> str:
    """``domain`` among the domain folders ``names`` of ``data_dir``, in either Unicode form,
    case folded if need be."""
    if domain in names:
        return domain
    typed = _name(domain.strip())
    for fold in (lambda name: name, str.lower):  # as spelt, then case folded
        found = [n for n in names if fold(_name(n)) == fold(typed)]
        if len(found) == 1:
            return found[0]
    raise UnknownNameError(
        f"unknown domain {domain!r} of dataset image-folder in {data_dir}; "
        f"known: {', '.join(names)}"
    )


class ImageFolderDataset(Dataset):
    """Images of one domain, decoded on access: RGB, resized to ``image_size`` x ``image_size``
    (bilinear), scaled to [0, 1] and normalised with the ImageNet mean and std.

    ``samples`` is the list of ``(path, label)``; ``targets`` the labels (:data:`UNLABELLED`
    in an unlabelled domain). Item: (x (3, S, S) float32, label int). An unreadable image
    raises :class:`DataError` naming the file.
    """

    def __init__(self, samples: list[tuple[Path, int]], image_size: int, domain: str = "") -> None:
        self.samples = samples
        self.targets = [label for _, label in samples]
        self.image_size = image_size
        self.domain = domain

    def __len__(self) -> int:
        return len(self.samples)

    def relabelled(self, mapping: list[int]) -> ImageFolderDataset:
        """The same images with label ``i`` as ``mapping[i]`` (:data:`UNLABELLED` kept)."""
        samples = [(path, mapping[label] if label >= 0 else label) for path, label in self.samples]
        return ImageFolderDataset(samples, self.image_size, domain=self.domain)

    def subset(self, indices: list[int]) -> ImageFolderDataset:
        """The images ``indices``, in that order."""
        return ImageFolderDataset([self.samples[i] for i in indices], self.image_size, domain=self.domain)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return load_image(path, self.image_size, domain=self.domain), label


def _sixteen_bits(image: Any) -> bool:
    """Whether an image PIL opened in mode I holds 16-bit values: a PNG's (PNG has no wider grey,
    and older PIL opens its 16-bit ones as I), a TIFF's of 16 bits per sample; else (a TIFF of
    32) not."""
    if image.format != "TIFF":
        return True
    bits = getattr(image, "tag_v2", {}).get(258, (32,))  # (BitsPerSample)
    return tuple(bits)[:1] == (16,)


def load_image(path: Path, image_size: int, *, domain: str = "") -> torch.Tensor:
    """One image file as a normalised (3, S, S) float32 tensor."""
    from PIL import Image, ImageOps

    bilinear = getattr(Image, "Resampling", Image).BILINEAR
    try:
        with Image.open(path) as opened:
            im = ImageOps.exif_transpose(opened)  # a phone photo's orientation tag, as a viewer shows it
            grey: np.ndarray | None = None  # a wide greyscale image's values on 0..255, which PIL's conversion would clip
            if im.mode.startswith("I;16") or im.mode == "I" and _sixteen_bits(opened):
                # 16-bit greyscale (PNG opens as I;16 or I): PIL's convert("RGB") would clip
                # every value above 255 to white, so scale 0..65535 to 0..255 first
                grey = np.asarray(im, dtype=np.float64) / 257.0
            elif im.mode == "I":
                # 32-bit integer greyscale (TIFF), whose range the file does not say: values of 0..255
                # (8-bit images saved from numpy's int32) are read as they are (as 16-bit ones, they had
                # been near black), values up to 65535 as 16-bit, wider ones by the type's range
                grey = np.asarray(im, dtype=np.float64)
                top = grey.max() if grey.size else 0.0
                if top > 255:  # (negative values are read as 0)
                    grey = grey / (257.0 if top <= 65535 else (2.0**31 - 1) / 255.0)
            elif im.mode == "F":
                # 32-bit float greyscale (TIFF): PIL would cut 0..1 to 0 (black); read 0..1 as
                # the full range, and anything larger as 0..255
                grey = np.asarray(im, dtype=np.float64)
                if not np.isfinite(grey).all():
                    raise ValueError("the image holds NaN or infinite pixel values")
                if grey.size and grey.min() >= 0.0 and grey.max() <= 1.0:
                    grey = grey * 255.0
            if grey is not None:
                im = Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), mode="L")
            rgb = im.convert("RGB").resize((image_size, image_size), bilinear)
    # PIL reports a damaged image as OSError (UnidentifiedImageError), ValueError, or even
    # SyntaxError for some broken PNG chunks.
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(
            f"cannot read image: {path} (dataset image-folder, domain {domain}): {reason}"
        ) from exc
    arr = np.asarray(rgb, dtype=np.float32) / 255.0  # (S, S, 3)
    x = torch.from_numpy(arr).permute(2, 0, 1)  # (3, S, S)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((x - mean) / std).contiguous()


def load(req: LoadRequest) -> Domain:
    assert req.data_dir is not None
    data_dir = req.data_dir
    by_domain = _class_folders(data_dir)  # one listing serves the classes and the checks below
    name = _resolve_folder(data_dir, req.domain, list(by_domain))
    root, own = by_domain.pop(name)
    # the other domains' classes, of folders that hold images: an empty class folder of the
    # domain itself is an error below, another domain's names no class
    by_domain = _holding_images(by_domain)
    others = sorted({c for _, names in by_domain.values() for c in names})
    classes = sorted(set(own) | set(others))
    class_dirs = [root / c for c in own]
    skipped: list[Path] = []
    broken: list[Path] = []
    loose = _images(root, skipped, broken)
    where = f"dataset image-folder, domain {name}"
    if class_dirs and loose:
        raise DataError(
            f"{root} holds both class folders ({class_dirs[0].name}, ...) and images ({loose[0].name}, ...) "
            f"({where}): put every image in a class folder (a labelled domain) or none (an unlabelled one)"
        )
    if not class_dirs and not loose:
        found = f"; skipped {len(skipped)} file(s) of other types ({_shown([p.name for p in skipped])})" if skipped else ""
        raise DataError(
            f"empty domain: no class folders and no images in {root} ({where}; expected DATA/DOMAIN/CLASS/IMAGE, "
            f"or DATA/DOMAIN/IMAGE for an unlabelled domain; images end in {' '.join(IMG_EXTENSIONS)}{found})"
        )
    if own and others and not set(own) & set(others):
        raise DataError(
            f"the class folders of {root} ({_shown(own)}) share no name with those of the other domains of {data_dir} "
            f"({'; '.join(f'{d}: {_shown(names)}' for d, (_, names) in sorted(by_domain.items()) if names)}) "
            f"({where}): labelled domains file the same classes, every domain of the folder counts, and an "
            "unlabelled domain keeps its images directly in its folder (a sub-folder is read as a class)"
        )
    samples: list[tuple[Path, int]] = [(p, UNLABELLED) for p in loose]
    missing = sorted(set(others) - set(own)) if own else []
    if missing:
        warn_outside_dalib(
            f"image folder {root} has no folder for {len(missing)} of the {len(classes)} classes of {data_dir} "
            f"({_shown(missing, 5)}); classes are matched by their exact folder names, case included",
            RuntimeWarning,
        )
    for cdir in class_dirs:
        files = _images(cdir, skipped, broken, nested=True)
        if not files:
            raise DataError(
                f"empty class folder: {cdir} holds no images, nor do its sub-folders "
                f"({where}; extensions {' '.join(IMG_EXTENSIONS)})"
            )
        label = classes.index(cdir.name)
        samples.extend((p, label) for p in files)
    if skipped:
        warn_outside_dalib(
            f"image folder {root}: skipped {len(skipped)} file(s) that are not images by their extension "
            f"({_shown([p.relative_to(root).as_posix() for p in skipped])}); images end in {' '.join(IMG_EXTENSIONS)}",
            RuntimeWarning,
        )
    if broken:
        warn_outside_dalib(
            f"image folder {root}: skipped {len(broken)} link(s) that lead to no file "
            f"({_shown([p.relative_to(root).as_posix() for p in broken])})",
            RuntimeWarning,
        )
    # a data folder of unlabelled domains alone has no classes: a trained network's give them theirs
    # (dalib eval does), and a run refuses such a source as unlabelled
    return Domain(
        name=name,
        dataset=ImageFolderDataset(samples, req.image_size, domain=name),
        num_classes=len(classes),
        input_shape=(3, req.image_size, req.image_size),
        classes=classes,
        origin=str(data_dir / name),
        dataset_name=INFO.name,
    )


register_dataset(INFO, load)
