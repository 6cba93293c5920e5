"""One path layer for everything under a workdir: local folders and `gs://` buckets.

Local paths go through `os`; `gs://bucket/...` through `etils.epath`, whose gs:// backend
without TensorFlow is fsspec/gcsfs (the same layer Orbax uses for its small files; its
arrays go through TensorStore's own GCS driver). Install it with `pip install jaxsr[gcs]`.

Object stores have no rename and no append, but an object appears only once its upload is
complete and an upload may be made conditional on the name being free
(`ifGenerationMatch=0`). So a remote file is written whole from a local temporary file:
`upload(..., overwrite=False)` never replaces an object, even one created meanwhile.

Errors: `check_workdir` turns the three ways a bucket fails at first use (no
credentials, no such bucket, no write permission) into one `StorageError` naming the path.

Emulators: every client here reads its endpoint from the environment
(STORAGE_EMULATOR_HOST for gcsfs, TENSORSTORE_GCS_HTTP_URL for TensorStore); see
tests/gcs_emulator.py.
"""
import contextlib
import os
import posixpath
import shutil
import tempfile
import uuid

REMOTE_PREFIXES = ("gs://",)
PROBE_NAME = ".jaxsr-write-check"


class StorageError(OSError):
    """A bucket that cannot be used (credentials, missing, read-only), naming the path."""


def is_remote(path) -> bool:
    return str(path).startswith(REMOTE_PREFIXES)


def absolute(path) -> str:
    """An absolute local path (Orbax rejects relative ones), or the URL as given."""
    path = str(path)
    return path.rstrip("/") if is_remote(path) else os.path.abspath(path)


def join(base, *parts) -> str:
    return posixpath.join(str(base), *map(str, parts)) if is_remote(base) \
        else os.path.join(str(base), *map(str, parts))


def dirname(path) -> str:
    return posixpath.dirname(str(path)) if is_remote(path) else os.path.dirname(str(path))


def basename(path) -> str:
    return posixpath.basename(str(path).rstrip("/"))


def epath_of(path):
    from etils import epath
    return epath.Path(str(path))


def _fs():
    """gcsfs, the same cached instance etils.epath uses."""
    import fsspec
    return fsspec.filesystem("gcs", finalize_on_close=True)


def _no_listing_cache() -> None:
    """gcsfs keeps folder listings for the life of a filesystem instance by default, so a
    process would not see checkpoints that another process (another host, or a later
    save) wrote after its first listing; every listing asks the bucket instead."""
    try:
        import fsspec.config
    except ImportError:         # no gcsfs/fsspec: local paths only
        return
    for protocol in ("gcs", "gs"):
        fsspec.config.conf.setdefault(protocol, {}).setdefault("use_listings_cache", False)


_no_listing_cache()


def exists(path) -> bool:
    return epath_of(path).exists() if is_remote(path) else os.path.lexists(path)


def isdir(path) -> bool:
    return epath_of(path).is_dir() if is_remote(path) else os.path.isdir(path)


def isfile(path) -> bool:
    return epath_of(path).is_file() if is_remote(path) else os.path.isfile(path)


def listdir(path) -> list[str]:
    if is_remote(path):
        return sorted(p.name for p in epath_of(path).iterdir())
    return os.listdir(path)


def size(path) -> int:
    return epath_of(path).stat().length if is_remote(path) else os.path.getsize(path)


def makedirs(path) -> None:
    """Local folders only: a bucket has no folders (names with '/' are enough)."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)


def read_bytes(path) -> bytes:
    if is_remote(path):
        return epath_of(path).read_bytes()
    with open(path, "rb") as f:
        return f.read()


def read_head(path, n: int) -> bytes:
    """The first `n` bytes of a file (on a bucket, one ranged read)."""
    if is_remote(path):
        return _fs().cat_file(str(path), start=0, end=n)
    with open(path, "rb") as f:
        return f.read(n)


def read_text(path) -> str:
    return read_bytes(path).decode()


def rmtree(path) -> None:
    if is_remote(path):
        _fs().rm(str(path), recursive=True)
    else:
        shutil.rmtree(path)


def upload(local: str, remote: str, *, overwrite: bool) -> None:
    """Copies a finished local file to `remote` in one upload (visible only when complete);
    without `overwrite` the upload is conditional on no object of that name
    (FileExistsError otherwise, the object untouched)."""
    try:
        _fs().put_file(local, str(remote), mode="overwrite" if overwrite else "create")
    except FileExistsError:
        raise FileExistsError(f"{remote} already exists") from None
    _fs().invalidate_cache(dirname(remote))


def download(remote: str, local: str) -> None:
    _fs().get_file(str(remote), local)


@contextlib.contextmanager
def local_copy(path):
    """A local file with the content of `path` (itself when local), for readers that take
    only local files (PIL, torch.load)."""
    if not is_remote(path):
        yield str(path)
        return
    with tempfile.TemporaryDirectory(prefix="jaxsr-") as tmp:
        local = os.path.join(tmp, basename(path))
        download(path, local)
        yield local


# ---------------------------------------------------------------------------------------
# One clear error for an unusable bucket.

def _credentials_problem() -> str | None:
    """Why no credentials can be found, or None (an emulator needs none)."""
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        return None
    try:
        import google.auth
        google.auth.default()
    except Exception as e:      # noqa: BLE001 - DefaultCredentialsError, TransportError
        return str(e).splitlines()[0]
    return None


def check_workdir(path: str, *, write: bool) -> None:
    """For a gs:// path: raises StorageError naming `path` when there are no credentials,
    the bucket does not exist, or (write=True) objects cannot be created there. The write
    check creates and deletes one small object, DIR/.jaxsr-write-check-<id>."""
    if not is_remote(path):
        return
    bucket = str(path)[len("gs://"):].split("/")[0]
    problem = _credentials_problem()
    if problem:
        raise StorageError(
            f"{path}: no Google Cloud credentials found ({problem}). On a Cloud TPU/GCE VM "
            "the VM's service account is used; elsewhere run `gcloud auth "
            "application-default login` or set GOOGLE_APPLICATION_CREDENTIALS.")
    try:
        found = _fs().exists(bucket)
    except OSError as e:
        raise StorageError(f"{path}: cannot read bucket gs://{bucket} ({_first_line(e)})") \
            from None
    if not found:
        raise StorageError(f"{path}: bucket gs://{bucket} does not exist (create it with "
                           f"`gcloud storage buckets create gs://{bucket}`)")
    if write:
        probe = join(path, f"{PROBE_NAME}-{uuid.uuid4().hex[:8]}")
        try:
            _fs().pipe_file(probe, b"", mode="create")
            _fs().rm(probe)
        except OSError as e:
            raise StorageError(
                f"{path}: cannot write to bucket gs://{bucket} ({_first_line(e)}); the "
                "account needs roles/storage.objectAdmin (create, read, delete) there")
        finally:
            _fs().invalidate_cache(str(path))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:300] if text else ''}"


class Mirror:
    """A local folder whose files are copied to the remote folder `remote` by `sync()`, for
    writers that append to local files (metrics.jsonl, TensorBoard event files): an
    object cannot be appended to, so each changed file is uploaded whole, replacing the
    previous object atomically (a reader sees the last synced version, never a partial
    one). For a local `remote`, `local` is `remote` itself and sync() does nothing."""

    def __init__(self, remote: str):
        self.remote = str(remote)
        self.active = is_remote(remote)
        self.local = tempfile.mkdtemp(prefix="jaxsr-mirror-") if self.active else self.remote
        self._sent = {}

    def path(self, *parts) -> str:
        return os.path.join(self.local, *parts)

    def fetch(self, name: str) -> None:
        """Starts local `name` from the remote one, so appends continue it (a resumed run)."""
        if self.active and exists(join(self.remote, name)):
            download(join(self.remote, name), self.path(name))
            self._sent[name] = _signature(self.path(name))

    def sync(self) -> None:
        if not self.active:
            return
        for folder, _, files in os.walk(self.local):
            for f in files:
                local = os.path.join(folder, f)
                name = os.path.relpath(local, self.local)
                sig = _signature(local)
                if self._sent.get(name) != sig:
                    upload(local, join(self.remote, *name.split(os.sep)), overwrite=True)
                    self._sent[name] = sig

    def close(self) -> None:
        if self.active:
            self.sync()
            shutil.rmtree(self.local, ignore_errors=True)


def _signature(path: str) -> tuple:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns
