"""MONAI Label serving the bundles: a real ``monailabel start_server`` on 127.0.0.1 with the repository's app.

MONAI Label 0.8.5 needs numpy < 2 and its own torch, so it lives in a separate venv (``.ci/label_env.sh``); its
python is ``$CUSTOM_MONAI_LABEL_PYTHON``. This file runs in the main test environment: it trains tiny 2D and 3D
models and runs ``python -m monai.bundle run inference`` here, starts the server with the label venv's python
(a free loopback port, a bounded wait, its process group always stopped), and talks HTTP to it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from bundle_utils import REPO_ROOT, demo_datalist, infer, train

# The server tests share one server (a module fixture): with pytest-xdist, `--dist loadgroup` keeps them on one
# worker (xdist_group); plain `-n` may start a second server on another worker, which works but costs time.

B2D, B3D = "global_local_fcnn_ceph2d", "global_local_fcnn_3d"
TINY_2D = dict(global_channels=[8, 16, 32, 64], global_blocks=[1, 1, 1, 1], global_head_channels=16, global_scale=0.2,
               chunk_size=[64, 64], local_channels=[8, 8], local_head_channels=8, patch_size=16, patches_per_image=1,
               batch_size=8, local_batch_size=8, val_interval=1)
TINY_3D = dict(global_channels=[8, 16, 32, 64], global_blocks=[1, 1, 1, 1], global_head_channels=16,
               global_spacing=[3.0, 3.0, 3.0], local_spacing=[1.5, 1.5, 1.5], chunk_size=[32, 32, 32],
               local_channels=[8, 8], local_head_channels=8, patch_size=8, patches_per_image=1, batch_size=4,
               local_batch_size=4, val_interval=1)
STARTUP_TIMEOUT = 180  # seconds for the server to answer /info/ (imports + building both bundles)


def _label_python() -> str:
    py = os.environ.get("CUSTOM_MONAI_LABEL_PYTHON", "")
    if py and Path(py).is_file():
        return py
    msg = ("MONAI Label venv not found: set CUSTOM_MONAI_LABEL_PYTHON to the python that `bash .ci/label_env.sh` "
           f"prints (got {py!r})")
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, method: str = "GET", data: bytes | None = None, headers: dict | None = None,
             timeout: float = 120) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    parts = []
    for k, v in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    for k, (name, content) in files.items():
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; filename="{name}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n")
        parts.append(head.encode() + content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


class Server:
    """``monailabel start_server`` in its own process group; ``stop()`` kills the whole group."""

    def __init__(self, python: str, app: Path, studies: Path, conf: dict[str, str], log: Path, env: dict) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [python, "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies),
               "--host", "127.0.0.1", "--port", str(self.port)]
        for k, v in conf.items():
            cmd += ["--conf", k, v]
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false", **env}
        self._log = open(log, "w")
        self.proc = subprocess.Popen(cmd, cwd=str(app.parent), env=full_env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                status, body = _request(self.url + "/info/", timeout=5)
                if status == 200:
                    return json.loads(body)
            except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError):
                pass
            time.sleep(1)
        raise AssertionError(f"server not answering /info/ after {timeout}s:\n{self.tail()}")

    def tail(self, n: int = 6000) -> str:
        self._log.flush()
        return self.log.read_text(errors="replace")[-n:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=20)
        self._log.close()

    def infer(self, model: str, image: str, output: str = "json") -> tuple[int, bytes]:
        q = urllib.parse.urlencode({"image": image, "output": output})
        return _request(f"{self.url}/infer/{model}?{q}", method="POST", data=b"")


def _landmarks(record: dict) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """(names, (N, D) pixel/voxel points, (N, 3) world or None) of a prediction record; NaN = not found."""
    lms = record["landmarks"]
    axes = "xyz" if "z" in lms[0] else "xy"
    pts = np.array([[np.nan if lm[a] is None else lm[a] for a in axes] for lm in lms], float)
    world = None
    if "world" in lms[0]:
        world = np.array([[np.nan if lm["world"][a] is None else lm["world"][a] for a in "xyz"] for lm in lms], float)
    return [lm["name"] for lm in lms], pts, world


def _markups(body: bytes) -> tuple[list[str], np.ndarray]:
    doc = json.loads(body)
    (mk,) = doc["markups"]
    assert mk["type"] == "Fiducial" and mk["coordinateSystem"] == "LPS" and mk["coordinateUnits"] == "mm"
    names = [cp["label"] for cp in mk["controlPoints"]]
    pts = np.array([cp["position"] if cp["positionStatus"] == "defined" else [np.nan] * 3 for cp in mk["controlPoints"]])
    return names, pts


def test_slicer_2d_frame_and_markups_datalist(tmp_path):
    """The 2D frame (ITK header -> LPS, as Slicer places the file) and the markups -> datalist conversion."""
    import itk

    from custom_monai.data.markups import write_mrk_json
    from custom_monai.label import lps_to_pixel_2d, markups_datalist, slicer_lps_2d

    img = itk.image_from_array(np.zeros((30, 40), np.float32))  # 40 columns (x), 30 rows (y)
    img.SetSpacing([0.5, 0.25])
    img.SetOrigin([10.0, -20.0])
    itk.imwrite(img, str(tmp_path / "a.mha"))
    px = np.array([[0.0, 0.0], [3.0, 4.0], [np.nan, np.nan]])
    lps = slicer_lps_2d(tmp_path / "a.mha", px)
    np.testing.assert_allclose(lps[:2], [[10.0, -20.0, 0.0], [11.5, -19.0, 0.0]])
    assert np.all(np.isnan(lps[2]))
    np.testing.assert_allclose(lps_to_pixel_2d(tmp_path / "a.mha", lps[:2]), px[:2], atol=1e-9)
    # a PNG: ITK's PNG reader gives origin 0, spacing 1, so Slicer shows pixel (x, y) at LPS (x, y, 0)
    from PIL import Image

    Image.fromarray(np.zeros((30, 40), np.uint8)).save(tmp_path / "b.png")
    np.testing.assert_allclose(slicer_lps_2d(tmp_path / "b.png", px[1:2]), [[3.0, 4.0, 0.0]])
    # 2D: markups back to pixels, matched by name to the model's landmarks
    write_mrk_json(tmp_path / "a.mrk.json", ["B", "A", "C"], np.array([[11.5, -19.0, 0.0], [10.0, -20.0, 0.0], [0, 0, 0]]))
    dl = markups_datalist([(str(tmp_path / "a.mha"), str(tmp_path / "a.mrk.json"))], 2, ["A", "B", "D"])
    assert dl["coordinate_space"] == "pixel" and dl["landmark_names"] == ["A", "B", "D"]
    np.testing.assert_allclose(dl["training"][0]["landmarks"][:2], [[0.0, 0.0], [3.0, 4.0]], atol=1e-9)
    assert dl["training"][0]["landmarks"][2] is None and any("'C'" in w for w in dl["warnings"])
    # 3D: world LPS millimetres as they are
    dl = markups_datalist([(str(tmp_path / "a.mha"), str(tmp_path / "a.mrk.json"))] * 2, 3, None, val_fraction=0.5)
    assert dl["coordinate_space"] == "world" and dl["landmark_names"] == ["B", "A", "C"]
    assert len(dl["training"]) == 1 and len(dl["validation"]) == 1
    np.testing.assert_allclose(dl["training"][0]["landmarks"][0], [11.5, -19.0, 0.0])


@pytest.fixture(scope="module")
def served(tmp_path_factory, demo_env):
    """Tiny 2D and 3D models, the bundles' own inference on the studies, and a running server on them."""
    python = _label_python()
    root = tmp_path_factory.mktemp("label")
    train(B2D, root / "m2d", demo_env, max_epochs=1, **TINY_2D)
    train(B3D, root / "m3d", demo_env, max_epochs=1, **TINY_3D)
    studies = root / "studies"
    studies.mkdir()
    images_2d = demo_datalist(demo_env, "2d").parent / "images"
    images_3d = demo_datalist(demo_env, "3d").parent / "images"
    for name in ("test_000.png", "test_001.png", "test_002.png"):
        shutil.copy(images_2d / name, studies / name)
    shutil.copy(images_3d / "test_000.nii.gz", studies / "vol_000.nii.gz")
    (studies / "broken.png").write_bytes((images_2d / "test_003.png").read_bytes()[:1500])
    # the bundles' own command on the same images and checkpoints
    expected = {}
    for bundle, images in ((B2D, ["test_000.png"]), (B3D, ["vol_000.nii.gz"])):
        inp = root / f"in_{bundle}"
        inp.mkdir()
        for name in images:
            shutil.copy(studies / name, inp / name)
        out = root / f"out_{bundle}"
        infer(bundle, inp, out, root / ("m2d" if bundle == B2D else "m3d") / "models", demo_env)
        expected[bundle] = {p.name.split(".")[0]: json.loads(p.read_text()) for p in out.glob("*.json")
                            if not p.name.endswith(".mrk.json")}
    app = root / "app"
    app.mkdir()
    shutil.copy(REPO_ROOT / "scripts" / "label_app" / "main.py", app / "main.py")
    conf = {"bundles": f"{B2D},{B3D}", f"ckpt_{B2D}": str(root / "m2d" / "models" / "model.pt"),
            f"ckpt_{B3D}": str(root / "m3d" / "models" / "model.pt"), "device": "cpu"}
    server = Server(python, app, studies, conf, root / "server.log", demo_env)
    try:
        info = server.wait_ready()
        yield server, info, expected, root
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.xdist_group("monailabel_server")
def test_info_lists_models_with_landmark_names(served):
    server, info, _, root = served
    models = info["models"]
    assert set(models) == {B2D, B3D}, models.keys()
    for bundle, n, dims in ((B2D, 19, 2), (B3D, 6, 3)):
        trained = json.loads((root / ("m2d" if dims == 2 else "m3d") / "models" / "model.json").read_text())
        names = trained["settings"]["landmark_names"]
        assert len(names) == n
        assert models[bundle]["labels"] == names and models[bundle]["landmarks"] == names
        assert models[bundle]["type"] == "detection" and models[bundle]["dimension"] == dims
    assert info["datastore"]["total"] == 5  # 3 PNGs, a volume and the corrupt PNG
    status, body = _request(server.url + "/datastore/?output=all")
    assert status == 200 and {"test_000", "vol_000", "broken"} <= set(json.loads(body)["objects"]), body[:1000]


@pytest.mark.slow
@pytest.mark.xdist_group("monailabel_server")
@pytest.mark.parametrize("bundle,image", [(B2D, "test_000"), (B3D, "vol_000")])
def test_infer_equals_bundle_inference(served, bundle, image):
    server, _, expected, _ = served
    status, body = server.infer(bundle, image, "json")
    assert status == 200, body[:2000]
    params = json.loads(body)
    names, pts, world = _landmarks(params)
    want_names, want, want_world = _landmarks(expected[bundle][image])
    assert names == want_names
    assert np.all(np.isfinite(pts))
    np.testing.assert_allclose(pts, want, atol=1e-3, rtol=0)
    assert params["method"] == bundle and params["spacing"] == expected[bundle][image]["spacing"]
    # the result file: a named 3D Slicer point list in LPS mm
    status, body = server.infer(bundle, image, "image")
    assert status == 200, body[:2000]
    mk_names, lps = _markups(body)
    assert mk_names == names
    if world is not None:  # 3D: the world coordinates the bundle writes
        np.testing.assert_allclose(world, want_world, atol=1e-3, rtol=0)
        np.testing.assert_allclose(lps, world, atol=1e-3, rtol=0)
    else:  # 2D PNG: as 3D Slicer shows it (ITK: origin 0, spacing 1; LPS (column, row, 0))
        np.testing.assert_allclose(lps, np.c_[pts, np.zeros(len(pts))], atol=1e-3, rtol=0)


@pytest.mark.slow
@pytest.mark.xdist_group("monailabel_server")
def test_bad_requests_give_errors_and_server_keeps_answering(served):
    server, _, _, _ = served
    status, body = server.infer(B2D, "no_such_image")
    assert status == 404 and b"no_such_image" in body, (status, body[:500])
    assert _request(server.url + "/info/")[0] == 200
    status, body = server.infer(B2D, "broken")
    assert status == 422 and b"broken.png" in body, (status, body[:500])
    assert _request(server.url + "/info/")[0] == 200
    status, body = server.infer("no_such_model", "test_000")
    assert status == 404, (status, body[:500])
    status, body = server.infer(B2D, "test_001")
    assert status == 200, body[:500]


@pytest.mark.slow
@pytest.mark.xdist_group("monailabel_server")
def test_train_on_saved_landmarks_publishes_a_served_model(served, demo_env):
    """Slicer saves point lists as final labels; the train task trains the bundle on them and serves the result."""
    from custom_monai.data.markups import write_mrk_json

    server, _, _, root = served
    dl = json.loads(demo_datalist(demo_env, "2d").read_text())
    truth = {Path(it["image"]).stem: it["landmarks"] for it in dl["test"]}
    for image in ("test_000", "test_001", "test_002"):
        pts = np.array([[np.nan, np.nan] if p is None else p for p in truth[image]], float)
        path = root / f"{image}.mrk.json"
        write_mrk_json(path, dl["landmark_names"], np.c_[pts, np.zeros(len(pts))])  # PNG in Slicer: LPS (x, y, 0)
        body, headers = _multipart({"params": "{}"}, {"label": (path.name, path.read_bytes())})
        q = urllib.parse.urlencode({"image": image, "tag": "final"})
        status, resp = _request(f"{server.url}/datastore/label?{q}", method="PUT", data=body, headers=headers)
        assert status == 200, resp[:1000]
    params = {"max_epochs": 1, "val_split": 0.34, "batch_size": 2, "local_batch_size": 2}
    q = urllib.parse.urlencode({"run_sync": "true"})
    status, resp = _request(f"{server.url}/train/{B2D}?{q}", method="POST", data=json.dumps(params).encode(),
                            headers={"Content-Type": "application/json"}, timeout=600)
    assert status == 200, (resp[-3000:], server.tail())
    stats = json.loads(resp)
    assert stats["n_training"] == 2 and stats["n_validation"] == 1 and np.isfinite(stats["best_metric"])
    run_dl = json.loads((Path(stats["run_dir"]) / "datalist.json").read_text())
    got = np.array([[np.nan] * 2 if p is None else p for p in run_dl["training"][0]["landmarks"]], float)
    first = Path(run_dl["training"][0]["image"]).stem
    np.testing.assert_allclose(got, np.array([[np.nan] * 2 if p is None else p for p in truth[first]], float), atol=1e-5)
    published = Path(stats["model"])
    assert published.is_file() and published.with_suffix(".json").is_file()
    status, body = server.infer(B2D, "test_000")
    assert status == 200, body[:1000]
    info = json.loads(_request(server.url + "/info/")[1])
    assert info["models"][B2D]["checkpoint"] == str(published.resolve())
