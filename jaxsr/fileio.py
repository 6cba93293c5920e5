"""Atomic, non-clobbering file writes shared by every command that writes user files.

A file is written under a temporary name in its own folder, flushed to disk, and only
then given its final name, so a crash, a full disk or a kill leaves either the old file
or the new one, never half of one. Without `overwrite=True` an existing file is never
replaced: the check happens before any work and again at the rename (a hard link, which
fails instead of replacing when the name appeared in the meantime).

    with fileio.atomic_path("out/model.pth", overwrite=False) as tmp:
        torch.save(sd, tmp)                   # any writer that takes a path
    fileio.write_json("eval/results.json", results, overwrite=True)

A `gs://` path (jaxsr.paths) is written the object store's way: the temporary file is
local, and one upload publishes it whole (an object is visible only once complete), made
conditional on the name being free unless `overwrite=True`.
"""
import contextlib
import errno
import json
import os
import tempfile
import uuid

from jaxsr import paths

TMP_MARK = ".tmp-"


class OverwriteError(FileExistsError):
    """Refusal to replace an existing file (the message says how to allow it)."""


def refuse_existing(path: str, hint: str = "pass --overwrite to replace it") -> None:
    if paths.exists(path):
        raise OverwriteError(f"{path} already exists; not overwriting it ({hint})")


def temp_name(path: str) -> str:
    """A hidden sibling of `path` with the same extension (writers that pick the format
    from the extension, PIL and matplotlib, keep working)."""
    folder, base = os.path.split(os.path.abspath(path))
    ext = os.path.splitext(base)[1]
    return os.path.join(folder, f".{base}{TMP_MARK}{uuid.uuid4().hex[:8]}{ext}")


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: str, path: str, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)              # atomic and never replaces an existing name
    except FileExistsError:
        raise OverwriteError(f"{path} appeared while it was being written; the new "
                             f"version was not kept") from None
    except OSError as e:                # filesystems without hard links
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        refuse_existing(path)
        os.rename(tmp, path)
        return
    os.unlink(tmp)


@contextlib.contextmanager
def atomic_path(path: str, *, overwrite: bool = False,
                hint: str = "pass --overwrite to replace it"):
    """Yields a temporary path to write; on success it becomes `path` (see module doc).

    On any error the temporary file is removed and an existing `path` is untouched."""
    if not overwrite:
        refuse_existing(path, hint)
    if paths.is_remote(path):
        with _remote_atomic_path(str(path), overwrite) as tmp:
            yield tmp
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        _fsync(tmp)
        _publish(tmp, path, overwrite)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def _remote_atomic_path(path: str, overwrite: bool):
    with tempfile.TemporaryDirectory(prefix="jaxsr-upload-") as folder:
        tmp = os.path.join(folder, paths.basename(path))      # same extension (PIL)
        yield tmp
        try:
            paths.upload(tmp, path, overwrite=overwrite)
        except FileExistsError:
            raise OverwriteError(f"{path} appeared while it was being written; the new "
                                 f"version was not kept") from None


def write_text(path: str, text: str, *, overwrite: bool = False) -> str:
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
    return path


def write_json(path: str, obj, *, overwrite: bool = False, **dump_kw) -> str:
    dump_kw.setdefault("indent", 2)
    return write_text(path, json.dumps(obj, **dump_kw) + "\n", overwrite=overwrite)


def describe_error(error: BaseException, limit: int = 300) -> str:
    """'TypeName: first line of the message' (TensorStore and XLA errors run to pages)."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:limit] if text else ''}"


def free_name(path: str) -> str:
    """`path` if unused, else `stem.1.ext`, `stem.2.ext`, ... (for keeping, never replacing)."""
    if not paths.exists(path):
        return path
    stem, ext = os.path.splitext(path)
    i = 1
    while paths.exists(f"{stem}.{i}{ext}"):
        i += 1
    return f"{stem}.{i}{ext}"


def write_png(path: str, img, *, overwrite: bool = False) -> str:
    """A uint8 image as PNG through `jaxsr.data.images.write_png`, atomic and non-clobbering."""
    from jaxsr.data import images
    with atomic_path(path, overwrite=overwrite) as tmp:
        images.write_png(tmp, img)
    return path


def write_npy(path: str, array, *, overwrite: bool = False) -> str:
    import numpy as np
    with atomic_path(path, overwrite=overwrite) as tmp:
        np.save(tmp, array)
    return path
