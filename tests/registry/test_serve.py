"""The registered champion served over HTTP by ``mlflow models serve``, as the README shows it.

The tiny Pref-Restore model (random weights, the real classes and the production loader) is
registered as ``prefrestore-quality`` with the alias ``champion``. The README's serve line then
runs in a shell whose ``PATH`` holds only the system directories (no venv activation), from a
folder laid out like a checkout (``.venv`` -> this interpreter's environment), on a free loopback
port. Its ``curl`` line restores a face, which must equal ``prefrestore restore`` with the same
seed; bad payloads get HTTP 400 with a message and the server keeps answering.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from prefrestore.cli.main import main as cli
from prefrestore.core import images
from prefrestore.core.config import PROJECT_ROOT, load
from prefrestore.core.images import ImageLimits
from prefrestore.model.config import ModelConfig
from prefrestore.model.flow import FlowSchedule
from prefrestore.model.model import PrefRestoreModel
from prefrestore.model.restore import RestoreConfig, save_inference
from prefrestore.registry import pyfunc as pyfunc_model
from prefrestore.registry import register

README_PORT = "5001"


def _readme_lines() -> tuple[str, list[str]]:
    """The README's serve line and the request lines after it (the block of 'Serving a champion')."""
    text = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### Serving a champion over HTTP"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the README's serving section has no bash block"
    lines = [line for line in block.group(1).splitlines() if line.strip()]
    assert "mlflow models serve -m models:/prefrestore-quality@champion --env-manager local" in lines[0]
    assert any(line.startswith("curl ") for line in lines[1:])
    return lines[0], lines[1:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png_b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _frame(columns: list[str], rows: list[list]) -> bytes:
    return json.dumps({"dataframe_split": {"columns": columns, "data": rows}}).encode()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """(base URL, checkout folder, tracking URI): the tiny champion behind the README's serve line."""
    import torch

    root = tmp_path_factory.mktemp("serve")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    params = load("tiny")
    model_dir = root / "model"
    torch.manual_seed(0)
    PrefRestoreModel.build(params.section("model", ModelConfig), "").save_pretrained(model_dir)
    save_inference(model_dir, params.section("restore", RestoreConfig), params.section("flow", FlowSchedule))
    cfg = params.section("register", register.RegisterConfig)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    mlflow.set_experiment("serve-test")
    with mlflow.start_run():
        version, _ = register.register_candidate(client, cfg, "quality", model_dir, {}, {}, pyfunc_model.load_restorer,
                                                 params.section("image_limits", ImageLimits))
    client.set_registered_model_alias(cfg.models["quality"], cfg.champion_alias, str(version))

    checkout = root / "checkout"
    checkout.mkdir()
    (checkout / ".venv").symlink_to(sys.prefix)  # as `make setup` leaves it
    port = _free_port()
    serve_line, _ = _readme_lines()
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", str(root)),
           "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           **({"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {})}
    assert subprocess.run(["bash", "-c", "command -v uvicorn"], env=env).returncode != 0  # not on this PATH
    log = open(root / "serve.log", "w")  # noqa: SIM115 (closed at teardown)
    proc = subprocess.Popen(["bash", "-c", serve_line.replace(README_PORT, str(port))], cwd=checkout,
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"serve exited {proc.returncode}:\n{(root / 'serve.log').read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"no answer in 180 s:\n{(root / 'serve.log').read_text()[-3000:]}"
            time.sleep(1)
        yield url, checkout, uri, env, port
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)  # bash, mlflow and uvicorn: the session the line started
            proc.wait(timeout=30)
        log.close()


def test_readme_curl_line_restores_like_prefrestore_restore(served, tiny_faces: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    url, checkout, uri, env, port = served
    face = next((tiny_faces / "images").glob("*.png"))
    (checkout / "face.png").write_bytes(face.read_bytes())
    _, request_lines = _readme_lines()
    for line in request_lines:
        proc = subprocess.run(["bash", "-c", line.replace(README_PORT, str(port))], cwd=checkout, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{shlex.quote(line)}: {proc.stderr[-2000:]}"
    served_png = images.load_rgb(checkout / "restored.png")

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    code = cli(["restore", str(face), "--variant", "quality", "--profile", "tiny", "--out", str(tmp_path / "out")])
    assert code == 0
    expected = images.load_rgb(tmp_path / "out" / face.name)
    resolution = load("tiny").section("model", ModelConfig).image_size
    assert served_png.shape == expected.shape == (resolution, resolution, 3)
    np.testing.assert_array_equal(served_png, expected)  # the same default seed: the same face


def test_bad_payloads_get_400_with_a_message_and_the_server_keeps_serving(served) -> None:
    url = served[0] + "/invocations"
    good = _png_b64(Image.new("RGB", (64, 64), (120, 90, 80)))
    cases = {
        "not base64": (_frame(["image"], [["not base64!"]]), "not valid base64"),
        "not an image": (_frame(["image"], [[base64.b64encode(b"hello").decode()]]), "bad image"),
        "1x1": (_frame(["image"], [[_png_b64(Image.new("RGB", (1, 1)))]]), "too_small"),
        "9000x9000": (_frame(["image"], [[_png_b64(Image.new("RGB", (9000, 9000)))]]), "too_large"),
        "wrong column": (_frame(["img"], [[good]]), "image"),
        "not JSON": (b"{this is not json", "JSON"),
    }
    for name, (body, message) in cases.items():
        status, answer = _post(url, body)
        assert status == 400, (name, status, answer)
        assert message in answer["message"], (name, answer["message"][:500])
        assert "Traceback" not in answer["message"], name

    status, answer = _post(url, _frame(["image"], []))
    assert status == 200 and answer == {"predictions": []}  # an empty batch: an empty answer
    status, answer = _post(url, _frame(["image", "seed"], [[good, 3]]))
    assert status == 200 and len(answer["predictions"]) == 1  # still serving
    assert images.load_rgb(base64.b64decode(answer["predictions"][0]["image"])).shape == (64, 64, 3)
