"""`prefrestore weights plan|verify`: every metric's files listed; missing/bad-checksum/present states."""

from __future__ import annotations

import hashlib
import json

import pytest

from prefrestore import metrics
from prefrestore.cli import weights as weights_cli
from prefrestore.cli.main import main as cli


@pytest.fixture()
def roots(tmp_path, monkeypatch):
    for var in ("HF_HOME", "TORCH_HOME", "PREFRESTORE_MODEL_STORE"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    return tmp_path


def _entry(relpath, sha=None, root="torch"):
    return weights_cli.Entry(root, relpath, sha, "src", ["x"], ["test"])


def test_plan_lists_every_metric_file_with_location_and_checksum(roots, capsys):
    assert cli(["weights", "plan", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    where = {(r["root"], r["relpath"]): r for r in plan["files"]}
    for w in metrics.WEIGHTS:
        assert (w.root, w.relpath) in where
    clip = where[("torch", "hub/clip/RN50.pt")]
    assert clip["sha256"] == "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762"
    assert where[("torch", "hub/pyiqa/musiq_koniq_ckpt-e95806b9.pth")]["sha256"].startswith("sha256 prefix e95806b9")
    assert where[("store", "hpsv2/HPS_v2.1_compressed.pt")]["sha256"] == weights_cli.UNPUBLISHED
    assert all(r["source"] for r in plan["files"])


def test_verify_require_fails_when_missing(roots, capsys):
    assert cli(["weights", "verify"]) == 0
    assert cli(["weights", "verify", "--require"]) == 1
    assert "missing" in capsys.readouterr().out


def test_checks_published_prefix_and_recorded_checksums(roots):
    body = b"weights"
    digest = hashlib.sha256(body).hexdigest()
    good = _entry(f"hub/pyiqa/model-{digest[:8]}.pth")
    bad = _entry("hub/pyiqa/model-00000000.pth")
    full = _entry("hub/clip/x.pt", sha=digest)
    for e in (good, bad, full):
        e.path.parent.mkdir(parents=True, exist_ok=True)
        e.path.write_bytes(body)
    assert weights_cli.check(good, {}) == "present"
    assert weights_cli.check(bad, {}) == "bad-checksum"
    assert weights_cli.check(full, {}) == "present"
    full.path.write_bytes(b"tampered")
    assert weights_cli.check(full, {}) == "bad-checksum"
    plain = _entry("hub/other/file.bin")
    plain.path.parent.mkdir(parents=True)
    plain.path.write_bytes(body)
    assert weights_cli.check(plain, {}) == "present"
    assert weights_cli.check(plain, {f"torch:{plain.relpath}": "0" * 64}) == "bad-checksum"
    assert weights_cli.check(_entry("hub/nothing.pth"), {}) == "missing"


def test_verify_record_writes_lock_for_unpublished_files(roots, capsys):
    store_file = roots / "prefrestore_model_store" / "hpsv2" / "HPS_v2.1_compressed.pt"
    store_file.parent.mkdir(parents=True)
    store_file.write_bytes(b"hps")
    assert cli(["weights", "verify", "--record"]) == 0
    lock = json.loads(weights_cli.lock_path().read_text())
    assert lock["store:hpsv2/HPS_v2.1_compressed.pt"] == hashlib.sha256(b"hps").hexdigest()
    store_file.write_bytes(b"changed")
    assert cli(["weights", "verify"]) == 1  # a bad checksum always fails
