"""Output paths, checked before the work starts, and files written whole or not at all.

    check_folder(Path("runs"), "--runs-dir")        # a folder that is, or can be made, and takes files
    check_file(Path("out/grid.png"), "--grid", IMAGE) # a file: not a folder, in such a folder, a known extension

A check writes nothing: a folder that does not exist yet is judged by its nearest existing
parent, and writability by a temporary file made there and removed at once (a read-only file
system, a folder without permission). Each refusal is one sentence naming the path and the
flag it came from.

Every file ddpmctl writes goes through ``atomic_write_bytes`` (a temporary file in the same
folder, renamed over the target: a full disk leaves the previous file, never half of a new one;
``save_figure`` and ``save_image`` for pictures), or ``append_bytes`` for a log (metrics.jsonl).
An OS error becomes a WriteError naming the path.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Optional

from ddpmctl.errors import OptionsError, WriteError

IMAGE = "image"  # check_file's kind for a picture that PIL writes (a grid of samples)
FIGURE = "figure"  # check_file's kind for a matplotlib figure (a plot)
# What matplotlib's Agg canvas writes (FigureCanvasBase.get_supported_filetypes), without importing it.
FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".svgz", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".eps", ".ps", ".pgf", ".raw", ".rgba")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:  # os.write may write less than asked
        view = view[os.write(fd, view):]


def write_error(path: Path, exc: OSError) -> WriteError:
    """The sentence of a failed write of ``path``: a full disk, a read-only folder, no permission."""
    return WriteError(f"could not write {path} ({exc.strerror or exc}); free some disk space or choose a writable folder "
                      "(--runs-dir for runs, --out for outputs, DDPMCTL_DATA_DIR for data).")


def atomic_write_bytes(path: Path, data: bytes, sync: bool = True) -> None:
    """Write to a temporary file in the same folder, fsync, rename over ``path``, fsync the folder.

    A crash leaves either the old file or the new one, never half of one (``sync=False`` skips
    the two fsyncs, for the many small files of an export whose manifest is written last).
    ENOSPC and other OS errors become a WriteError naming the path; the temporary file is removed.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; the file gets what open() would give it
            _write_all(fd, data)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        raise write_error(path, exc) from exc
    if not sync:
        return
    try:
        dfd = os.open(path.parent, os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def append_bytes(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` (a log such as metrics.jsonl: earlier lines are never rewritten);
    a write that fails part-way is cut back off, so the next line does not join a broken one.
    OS errors become a WriteError naming the path."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as exc:
        raise write_error(Path(path), exc) from exc
    size = None
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        _write_all(fd, data)
    except OSError as exc:
        try:
            if size is not None:
                os.ftruncate(fd, size)
            if not size:  # the file was empty (or made here): none is left
                os.unlink(path)
        except OSError:
            pass
        raise write_error(Path(path), exc) from exc
    finally:
        os.close(fd)


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_folder(path: Path, what: str) -> Path:
    """A folder ddpmctl will write in: it exists as a folder, or can be made where its nearest
    existing parent is a writable folder. ``what`` names it in a refusal (the flag)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OptionsError(f"{what} {path} is a file, not a folder; choose a folder.")
    _takes_files(path, what, path)
    return path


def _takes_files(folder: Path, what: str, target: Path) -> None:
    """``folder`` (to hold ``target``) is, or can be made in, a folder that takes new files."""
    base = _existing(folder)
    if not base.is_dir():
        raise OptionsError(f"{what} {target} cannot be {'made' if target == folder else 'written'}, because {base} is a file; choose another path.")
    try:
        with tempfile.TemporaryFile(dir=base, prefix=".ddpmctl-probe-"):
            pass
    except OSError as exc:
        raise OptionsError(f"{what} {target} cannot be written, because {base} does not take new files ({exc.strerror or exc}); choose a writable folder.") from None


def image_suffixes() -> dict[str, str]:
    """Extensions PIL can write -> its format name ('.png' -> 'PNG')."""
    from PIL import Image  # PIL: imported when an image is checked or written

    Image.init()
    return {ext: fmt for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}


def check_file(path: Path, what: str, kind: Optional[str] = None) -> Path:
    """A file ddpmctl will write: not a folder, in a folder ``check_folder`` accepts; ``kind``
    IMAGE or FIGURE: an extension PIL, or matplotlib, can write."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise OptionsError(f"{what} {path} is a folder; give a file path, such as {path / ('picture.png' if kind else 'out.json')}.")
    suffix = path.suffix.lower()
    if kind is not None:
        known = image_suffixes() if kind == IMAGE else dict.fromkeys(FIGURE_SUFFIXES)
        if suffix not in known:
            got = f"the extension {suffix!r}" if suffix else "no extension"
            raise OptionsError(f"{what} {path} has {got}, which is not an image format ddpmctl can write; use .png (or .jpg, .pdf{', .svg' if kind == FIGURE else ', .webp'}).")
    _takes_files(path.parent, what, path)
    return path


def save_figure(fig, path: Path, **kwargs) -> Path:
    """A matplotlib figure, written atomically in the format of its extension."""
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=(path.suffix.lstrip(".").lower() or "png"), **kwargs)
    atomic_write_bytes(path, buf.getvalue())
    return path


def save_image(image, path: Path, sync: bool = True, **kwargs) -> Path:
    """A PIL image, written atomically in the format of its extension (PNG without one)."""
    path = Path(path)
    buf = io.BytesIO()
    image.save(buf, format=image_suffixes().get(path.suffix.lower(), "PNG"), **kwargs)
    atomic_write_bytes(path, buf.getvalue(), sync=sync)
    return path
