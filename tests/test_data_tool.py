"""`python -m jaxsr.tools.data get|verify` against a loopback HTTP server that serves
archives built here from ../shared/data (these machines have no internet).

The server runs in a thread on 127.0.0.1 (port 0) and is shut down in teardown. Besides the
good archives it serves a truncated one (honest Content-Length: the archive itself is
damaged) and one whose body stops short of its Content-Length.
"""
import hashlib
import http.server
import io
import json
import os
import shutil
import tarfile
import threading
import zipfile

import numpy as np
import pytest
from PIL import Image

from jaxsr.tools import data as data_tool
from jaxsr.tools import data_verify


def tar_bytes(files: dict) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, path in files.items():
            t.add(path, arcname=name)
    return buf.getvalue()


def zip_bytes(files: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, path in files.items():
            z.write(path, arcname=name)
    return buf.getvalue()


class Handler(http.server.BaseHTTPRequestHandler):
    routes: dict = {}       # path -> (body, announced length)

    def do_GET(self):
        if self.path not in self.routes:
            self.send_error(404)
            return
        body, length = self.routes[self.path]
        self.send_response(200)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(shared_data):
    set5 = shared_data / "benchmarks" / "Set5"
    bench = {f"benchmark/Set5/{p.relative_to(set5)}": p
             for p in sorted(set5.rglob("*.png"))}
    good = tar_bytes(bench)
    div2k_src = sorted((shared_data / "train" / "DIV2K_valid_HR_subset").glob("*.png"))[:2]
    hr = {f"DIV2K_valid_HR/{801 + i:04d}.png": p for i, p in enumerate(div2k_src)}
    lr = {f"DIV2K_valid_LR_bicubic/X2/{801 + i:04d}x2.png": p for i, p in enumerate(div2k_src)}
    routes = {
        "/good/benchmark.tar": (good, len(good)),
        "/good/DIV2K_valid_HR.zip": (zip_bytes(hr), None),
        "/good/DIV2K_valid_LR_bicubic_X2.zip": (zip_bytes(lr), None),
        "/truncated/benchmark.tar": (good[:len(good) // 2], len(good) // 2),
        "/short/benchmark.tar": (good[:len(good) // 2], len(good)),
    }
    Handler.routes = {k: (b, n if n is not None else len(b)) for k, (b, n) in routes.items()}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


def get(base, dataset, out, *extra):
    return data_tool.main(["get", dataset, "--out", str(out), "--mirror", base, *extra])


def test_get_benchmarks_then_verify(server, tmp_path, capsys):
    assert get(f"{server}/good", "benchmarks", tmp_path) == 0
    set5 = tmp_path / "benchmarks" / "Set5"
    assert (set5 / "HR" / "baby.png").is_file()
    assert (set5 / "LR_bicubic" / "X4" / "babyx4.png").is_file()
    assert not (tmp_path / ".partial").exists()          # the archive is not kept
    assert data_tool.main(["verify", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Set5 (" in out and "ok: 20 file(s) match" in out
    # A second get leaves the complete folder alone.
    assert get(f"{server}/good", "benchmarks", tmp_path) == 0
    assert "exists, left alone" in capsys.readouterr().out


def test_get_div2k_pairs_and_verify_by_content(server, tmp_path, capsys):
    assert get(f"{server}/good", "div2k", tmp_path, "--splits", "valid", "--scales", "2") == 0
    assert sorted(os.listdir(tmp_path / "DIV2K")) == ["DIV2K_valid_HR", "DIV2K_valid_LR_bicubic"]
    assert sorted(os.listdir(tmp_path / "DIV2K" / "DIV2K_valid_LR_bicubic" / "X2")) == [
        "0801x2.png", "0802x2.png"]
    capsys.readouterr()
    # Only 2 of the 8 reference DIV2K images are there: the other 6 are named missing.
    assert data_tool.main(["verify", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "DIV2K (" in out and "2 file(s) match" in out and out.count("missing: im_") == 6


@pytest.mark.parametrize("mirror", ["truncated", "short"])
def test_damaged_download_leaves_nothing_that_looks_complete(server, tmp_path, capsys, mirror):
    assert get(f"{server}/{mirror}", "benchmarks", tmp_path) == 1
    err = capsys.readouterr().err
    assert "benchmark.tar" in err and ("damaged or truncated" in err or "incomplete" in err)
    assert not (tmp_path / "benchmarks").exists()
    leftovers = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert leftovers == [], leftovers        # no archive, no partial files
    # The rerun from a good mirror then completes.
    assert get(f"{server}/good", "benchmarks", tmp_path) == 0
    assert (tmp_path / "benchmarks" / "Set5" / "HR" / "woman.png").is_file()


def test_verify_names_wrong_missing_and_extra_files(shared_data, tmp_path, capsys):
    set5 = tmp_path / "Set5"
    shutil.copytree(shared_data / "benchmarks" / "Set5", set5)
    os.chmod(set5 / "HR", 0o755)
    for p in set5.rglob("*"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    # Same pixels re-saved (other PNG bytes) still counts as the same image.
    img = Image.open(set5 / "HR" / "bird.png")
    img.save(set5 / "HR" / "bird.png", compress_level=1)
    # A modcropped copy of one file, other pixels in another, one missing, one extra.
    Image.open(set5 / "HR" / "baby.png").crop((0, 0, 510, 510)).save(set5 / "HR" / "baby.png")
    head = np.array(Image.open(set5 / "HR" / "head.png"))
    head[0, 0] ^= 1
    Image.fromarray(head).save(set5 / "HR" / "head.png")
    os.remove(set5 / "LR_bicubic" / "X3" / "womanx3.png")
    shutil.copy(set5 / "HR" / "woman.png", set5 / "HR" / "woman_copy.png")
    assert data_tool.main(["verify", str(set5)]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH" in out
    assert "differs: HR/baby.png: 510x510, expected 512x512" in out
    assert "differs: HR/head.png: same size (280x280), other pixels" in out
    assert "missing: LR_bicubic/X3/womanx3.png" in out
    assert "extra:   HR/woman_copy.png" in out
    assert "note:    HR/bird.png: same pixels, other file bytes" in out
    assert "differs: HR/bird.png" not in out


def test_verify_accepts_uncropped_b100_originals_by_bsd_id(tmp_path):
    """names.tsv records the sha256 of the 481x321 originals; a file with that name and
    sha256 counts (here: a fake checksums file whose 'original' is a file we write)."""
    b100 = tmp_path / "B100" / "HR"
    b100.mkdir(parents=True)
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(b100 / "3096.png")
    Image.fromarray(np.ones((4, 6, 3), np.uint8)).save(b100 / "8023.png")
    sha = hashlib.sha256((b100 / "3096.png").read_bytes()).hexdigest()
    fake = {"datasets": {"B100": {
        "files": {"HR/img_067_SRF_3_HR.png": {"bytes": 1, "sha256": "0", "pixels": "0",
                                              "size": "480x321"},
                  "HR/img_099_SRF_3_HR.png": {"bytes": 1, "sha256": "0", "pixels": "0",
                                              "size": "480x321"}},
        "originals": {"HR/3096.png": {"bytes": 1, "sha256": sha, "of": "img_067_SRF_3_HR.png"},
                      "HR/8023.png": {"bytes": 1, "sha256": "0", "of": "img_099_SRF_3_HR.png"}}}}}
    (tmp_path / "sums.json").write_text(json.dumps(fake))
    [r] = data_verify.verify(str(tmp_path), str(tmp_path / "sums.json"))
    assert r.ok == ["HR/3096.png"]
    assert r.differ == [("HR/8023.png", "not the known BSD original of img_099_SRF_3_HR.png")]
    assert r.missing == []
    assert "uncropped BSD original of img_067_SRF_3_HR.png" in r.notes[0][1]


def test_shipped_checksums_match_the_reference_data(shared_data, capsys):
    """The shipped file describes ../shared/data: verify passes on it (bytes only, fast)."""
    assert data_tool.main(["verify", str(shared_data / "benchmarks")]) == 0
    out = capsys.readouterr().out
    for name, n in (("Set5", 20), ("Set14", 56), ("B100", 100), ("Urban100", 100)):
        assert f"{name} (" in out and f"ok: {n} file(s) match" in out


def test_archive_member_outside_the_archive_is_refused():
    with pytest.raises(data_tool.DataError, match="outside the archive"):
        data_tool.safe_relative("benchmark/../../etc/passwd", "benchmark/")
    assert data_tool.safe_relative("./benchmark/Set5/HR/a.png", "benchmark/") == "Set5/HR/a.png"
    assert data_tool.safe_relative("other/a.png", "benchmark/") is None
