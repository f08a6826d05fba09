"""Getting datasets onto disk: download through torchvision, or import the original files.

``fetch(name, source=None)`` puts a dataset where its loader reads it, under the data
directory (``$DDPMCTL_DATA_DIR``), and checks it:

- ``mnist`` / ``fashion-mnist``: the four IDX files (``.gz`` or uncompressed) go to
  ``<data dir>/MNIST/raw/`` (``FashionMNIST/raw/``) uncompressed, where torchvision's classes
  read them; each must have the MD5 of the original uncompressed file.
- ``cifar10``: the binary version, ``cifar-10-binary.tar.gz`` (MD5 checked) or its extracted
  ``cifar-10-batches-bin`` folder, goes to ``<data dir>/cifar-10-batches-bin/``.
- ``emoji32``: a folder of PNGs is copied to ``<data dir>/emoji32/`` (there is no download).

Nothing here prints; the messages are returned for the CLI.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from ddpmctl import registry
from ddpmctl.config import data_dir
from ddpmctl.datasets import images, mnist
from ddpmctl.errors import DataError, WriteError
from ddpmctl.outputs import atomic_write_bytes, check_folder, write_error

ALIASES = {"mnist16": "mnist"}
FETCHABLE = ("mnist", "mnist16", "fashion-mnist", "cifar10", "emoji32")
_CIFAR_BATCH_BYTES = 10_000 * images.CIFAR10_RECORD


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _read_maybe_gzip(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path} cannot be read ({exc.strerror or exc}); check the file and its permissions.") from None
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path} is a damaged gzip file ({exc}); get the original file again.") from None
    return raw


def _find(source: Path, name: str, folder: str) -> Path | None:
    """DIR/name[.gz], also the dotted variant (train-images.idx3-ubyte) and DIR/<folder>/raw/."""
    dotted = name.replace("-idx", ".idx")
    for base in (source, source / folder / "raw", source / "raw"):
        for candidate in (name, name + ".gz", dotted, dotted + ".gz"):
            if (base / candidate).is_file():
                return base / candidate
    return None


def import_mnist_like(name: str, source: Path) -> list[str]:
    """Check and copy the four IDX files of ``name`` from ``source`` into the data dir."""
    _, folder, files = mnist.SOURCES[name]
    if not source.is_dir():
        raise DataError(f"{source} is not a folder; pass --from the folder that holds the {name} .gz (or uncompressed) IDX files.")
    found = {}
    for f, expected in files.items():
        path = _find(source, f, folder)
        if path is None:
            raise DataError(f"{source} has no {f} or {f}.gz; pass --from the folder that holds the four original {name} IDX files.")
        data = _read_maybe_gzip(path)
        got = md5(data)
        if got != expected:
            raise DataError(
                f"{path} is not the original {f}: its uncompressed MD5 is {got}, expected {expected}; get an undamaged copy."
            )
        found[f] = data
    raw = data_dir() / folder / "raw"
    for f, data in found.items():  # all checked first: nothing is half-imported
        atomic_write_bytes(raw / f, data)
    return [f"imported {name} from {source} into {raw} (4 files, MD5s match the originals)"]


def download_mnist_like(name: str) -> list[str]:
    import torchvision.datasets as tvd

    cls_name, folder, files = mnist.SOURCES[name]
    root = data_dir()
    if mnist.raw_files_present(name, root):
        return [f"{name} is already in {root / folder / 'raw'}"]
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            getattr(tvd, cls_name)(str(root), train=True, download=True)
    except Exception as exc:  # no network, a mirror down, a checksum failure
        first = str(exc).strip().splitlines()
        reason = " ".join(line.strip() for line in first[-2:]) if first else type(exc).__name__
        raise DataError(
            f"could not download {name} ({reason}); if this machine is offline, copy the four original IDX files "
            f"here some other way and import them with `ddpmctl data fetch {name} --from DIR`."
        ) from None
    return [f"downloaded {name} into {root / folder / 'raw'}"]


def import_cifar10(source: Path) -> list[str]:
    root = data_dir()
    dest = root / images.CIFAR10_FOLDER
    names = images.CIFAR10_FILES["train"] + images.CIFAR10_FILES["test"]
    if source.is_file() or (source / "cifar-10-binary.tar.gz").is_file():
        archive = source if source.is_file() else source / "cifar-10-binary.tar.gz"
        got = md5(archive.read_bytes())
        if got != images.CIFAR10_MD5:
            raise DataError(f"{archive} is not the original cifar-10-binary.tar.gz: its MD5 is {got}, expected {images.CIFAR10_MD5}.")
        extract_cifar10(archive, root, dest)
        return [f"imported CIFAR-10 from {archive} into {dest}"]
    folder = next((d for d in (source, source / images.CIFAR10_FOLDER) if all((d / n).is_file() for n in names)), None)
    if folder is None:
        raise DataError(
            f"{source} has neither cifar-10-binary.tar.gz nor the files {', '.join(names)}; "
            "ddpmctl reads the binary version of CIFAR-10 (the Python version is pickled)."
        )
    for n in names:
        size = (folder / n).stat().st_size
        if size != _CIFAR_BATCH_BYTES:
            raise DataError(f"{folder / n} has {size} bytes, not the {_CIFAR_BATCH_BYTES} of a CIFAR-10 binary batch; get an undamaged copy.")
    dest.mkdir(parents=True, exist_ok=True)
    for n in names:
        atomic_write_bytes(dest / n, (folder / n).read_bytes())
    return [f"imported CIFAR-10 from {folder} into {dest}"]


def extract_cifar10(archive: Path, root: Path, dest: Path) -> None:
    """The archive's batches into ``dest``, through a temporary folder beside it: each file lands
    whole, by a rename, or not at all (a full disk leaves what was there)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root, prefix=".cifar10-") as tmp:
            try:
                with tarfile.open(archive) as tar:
                    tar.extractall(tmp, filter="data")
            except tarfile.TarError as exc:
                raise DataError(f"{archive} could not be extracted ({exc}); get an undamaged copy.") from None
            got = Path(tmp) / images.CIFAR10_FOLDER
            if not got.is_dir():
                raise DataError(f"{archive} has no {images.CIFAR10_FOLDER} folder; get the original cifar-10-binary.tar.gz.")
            dest.mkdir(exist_ok=True)
            for f in sorted(got.iterdir()):
                os.replace(f, dest / f.name)
    except OSError as exc:
        raise write_error(dest, exc) from None


def download_cifar10() -> list[str]:
    from torchvision.datasets.utils import download_and_extract_archive

    root = data_dir()
    if all((root / images.CIFAR10_FOLDER / n).is_file() for n in images.CIFAR10_FILES["train"] + images.CIFAR10_FILES["test"]):
        return [f"CIFAR-10 is already in {root / images.CIFAR10_FOLDER}"]
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            download_and_extract_archive(images.CIFAR10_URL, str(root), md5=images.CIFAR10_MD5)
    except Exception as exc:
        raise DataError(
            f"could not download CIFAR-10 ({type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}); "
            "if this machine is offline, copy cifar-10-binary.tar.gz here and import it with `ddpmctl data fetch cifar10 --from DIR`."
        ) from None
    return [f"downloaded CIFAR-10 into {root / images.CIFAR10_FOLDER}"]


def import_folder(name: str, source: Path) -> list[str]:
    """Copy a folder of images to ``<data dir>/NAME`` as a whole: into a temporary folder beside
    it, then renamed over it, so that a full disk leaves the previous import as it was and a new
    import replaces the old one rather than mixing with it."""
    files, _ = images._list_images(source)  # one sentence if missing, empty or unreadable
    for p in files:  # every image decodes, or the import is refused before anything is written
        images._decode(p, 1, "rgb", "resize")
    dest = data_dir() / name
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{name}-"))
    except OSError as exc:
        raise write_error(dest, exc) from None
    try:
        for p in files:
            atomic_write_bytes(tmp / p.relative_to(source), p.read_bytes(), sync=False)
        replace_folder(tmp, dest)
    except WriteError as exc:  # named after where the import goes, not its temporary folder
        raise (write_error(dest, exc.__cause__) if isinstance(exc.__cause__, OSError) else exc) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [f"imported {len(files)} images from {source} into {dest}"]


def replace_folder(new: Path, dest: Path) -> None:
    """Put the folder ``new`` where ``dest`` is, by renames: the old one is removed only once the new one is in place."""
    old = new.with_name(new.name + ".old")
    try:
        if dest.exists():
            os.replace(dest, old)
        try:
            os.replace(new, dest)
        except OSError:
            if old.exists():
                os.replace(old, dest)  # put the previous import back
            raise
    except OSError as exc:
        raise write_error(dest, exc) from None
    shutil.rmtree(old, ignore_errors=True)


def fetch(name: str, source: Path | None = None) -> list[str]:
    """Download (source None) or import (from a local folder) one dataset; returns what was done."""
    key = ALIASES.get(name, name)
    if key in FETCHABLE:  # where it goes takes files, before anything is read or downloaded
        check_folder(data_dir(), "the data directory (DDPMCTL_DATA_DIR)")
    if key in mnist.SOURCES:
        return import_mnist_like(key, Path(source)) if source else download_mnist_like(key)
    if key == "cifar10":
        return import_cifar10(Path(source)) if source else download_cifar10()
    if key == "emoji32":
        if source is None:
            raise images.emoji32_missing(data_dir() / "emoji32")
        return import_folder("emoji32", Path(source))
    if key == "imagefolder":
        raise DataError("imagefolder reads its folder in place, nothing to fetch; train with --data imagefolder -o data.root=DIR.")
    if key in registry.names("dataset"):
        raise DataError(f"dataset {name!r} is generated on the fly, nothing to fetch; fetchable: {', '.join(FETCHABLE)}.")
    raise DataError(f"unknown dataset {name!r} for fetch; fetchable: {', '.join(FETCHABLE)}.")
