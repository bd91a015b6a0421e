"""The validate step: GX suites pass on good data and fail, naming the expectation, on bad data."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from prefrestore.core.config import load
from prefrestore.data import validate


@pytest.fixture(scope="module")
def params():
    return load("tiny")


def _captions(manifest: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"id": manifest["id"], "caption": manifest["caption_hint"], "valid": True,
                         "attempts": 1, "flag": ""})


def test_good_faces_and_captions_pass(tiny_faces, params, tmp_path):
    manifest = pd.read_parquet(tiny_faces / "manifest.parquet")
    _captions(manifest).to_parquet(tmp_path / "captions.parquet")
    summary = validate.run(params, {"faces": tiny_faces, "captions": tmp_path}, tmp_path / "report")
    assert summary["success"] and summary["manifest_rows"] == 24 and summary["failed_expectations"] == 0
    assert summary["suites"] == ["manifest", "files", "captions"]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["success"] is True
    assert all(e["success"] for s in report["suites"].values() for e in s["expectations"])
    assert "**Result: PASSED**" in (tmp_path / "report" / "report.md").read_text()


def test_bad_manifest_fails_and_the_report_names_it(tiny_faces, params, tmp_path):
    faces = tmp_path / "faces"
    shutil.copytree(tiny_faces, faces)
    m = pd.read_parquet(faces / "manifest.parquet")
    m.loc[1, "id"] = m.loc[0, "id"]  # duplicate id
    m.loc[2, "width"] = 63  # wrong size claimed
    m.loc[3, "split"] = "validation"  # unknown split
    m.to_parquet(faces / "manifest.parquet")
    png = (faces / m.loc[4, "path"]).read_bytes()
    (faces / m.loc[4, "path"]).write_bytes(png[: len(png) // 2])  # truncated file
    (faces / m.loc[5, "path"]).unlink()  # missing file
    with pytest.raises(validate.ValidationFailed) as info:
        validate.run(params, {"faces": faces}, tmp_path / "report")
    failed = set(info.value.failed)
    assert failed == {
        "manifest: ids are unique",
        "manifest: width == data.resolution (64)",
        "manifest: split is train or test",
        "files: every image file exists",
        "files: every image decodes",
        "files: decoded width == 64",
        "files: decoded height == 64",
        "files: file sha256 equals the manifest's",
        "files: every image is stored as 8-bit RGB",
    }
    report = json.loads((tmp_path / "report" / "report.json").read_text())  # written before raising
    assert report["success"] is False
    by_desc = {e["description"]: e for e in report["suites"]["manifest"]["expectations"]}
    assert by_desc["split is train or test"]["unexpected_count"] == 1
    assert by_desc["split is train or test"]["examples"] == [{"id": m.loc[3, "id"], "value": "validation"}]
    files = {e["description"]: e for e in report["suites"]["files"]["expectations"]}
    assert {ex["id"] for ex in files["every image decodes"]["examples"]} == {m.loc[4, "id"], m.loc[5, "id"]}
    md = (tmp_path / "report" / "report.md").read_text()
    assert "**Result: FAILED**" in md and "| **NO** | ids are unique |" in md and "'validation'" in md


def test_caption_suite_flags_each_rule(tiny_faces, params):
    manifest = pd.read_parquet(tiny_faces / "manifest.parquet")
    caps = _captions(manifest)
    caps.loc[0, "caption"] = "A portrait of a man"  # wrong prefix
    caps.loc[1, "caption"] = "a photography of a " + "very " * 100  # 105 words
    caps.loc[2, "caption"] = " "  # blank
    caps.loc[3, "caption"] = None
    caps = pd.concat([caps.drop(index=4), pd.DataFrame([{"id": "stray", "caption": "a photography of a cat",
                                                         "valid": True, "attempts": 1, "flag": ""}])])
    cfg = params.section("validate", validate.ValidateConfig)
    result = validate.validate_captions(caps, cfg, manifest["id"].tolist())
    assert not result.success
    bad = {e["description"]: e for e in result.expectations if not e["success"]}
    assert set(bad) == {"caption is not null", "caption is non-empty", "caption starts with 'a photography of a'",
                        "caption has fewer than 100 words", "every image id has a caption",
                        "every caption id is a manifest image"}
    assert bad["caption starts with 'a photography of a'"]["unexpected_count"] == 2  # the wrong one + the blank
    assert bad["every image id has a caption"]["examples"][0]["id"] == manifest.loc[4, "id"]
    assert bad["every caption id is a manifest image"]["examples"][0]["id"] == "stray"
    assert validate.validate_captions(_captions(manifest), cfg).success  # no coverage check without ids


def test_missing_inputs_are_clear_errors(params, tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.parquet"):
        validate.run(params, {"faces": tmp_path}, tmp_path / "report")
