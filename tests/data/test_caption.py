"""The caption step: schema, validity/retry/flagging, exactly-once resume after SIGKILL, the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prefrestore.core.config import ConfigError, load
from prefrestore.core.images import save_png
from prefrestore.data import caption
from prefrestore.data.synthetic import caption_from_attributes, make_face

PAPER = Path(__file__).resolve().parents[2].parent / "shared" / "paper" / "pref-restore-paper.txt"
PAPER_PROMPT = (
    "Please describe this portrait image in English. Start with 'a photography of a', incorporating descriptors "
    "such as gender, facial features, accessories, hairstyle, hair color, skin tone, and other characteristics "
    "you find relevant for depicting the person. Keep the description under 100 words."
)


def make_faces(root: Path, n: int, resolution: int = 32, hint_every: int = 2) -> Path:
    """A tiny ingest-style folder: images/<id>.png + manifest.parquet (ARCHITECTURE.md schema)."""
    rows = []
    for i in range(n):
        img, attrs = make_face(0, i, resolution)
        fid = f"syn{i:05d}"
        save_png(root / "images" / f"{fid}.png", img)
        hint = caption_from_attributes(attrs) if i % hint_every == 0 else ""
        rows.append({"id": fid, "path": f"images/{fid}.png", "source": "synthetic", "sha256": "", "width": resolution,
                     "height": resolution, "split": "train", "attributes": json.dumps(attrs.to_dict()),
                     "caption_hint": hint})
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet", index=False)
    return root


@pytest.fixture
def faces(tmp_path):
    return make_faces(tmp_path / "faces", 10)


def test_system_prompt_is_the_papers_verbatim():
    prompt = load("paper").tree["caption"]["system_prompt"]
    assert prompt == PAPER_PROMPT
    assert load("paper").tree["caption"]["model"] == "Qwen/Qwen2.5-VL-32B-Instruct"
    if PAPER.is_file():  # compare with the paper itself (curly quotes normalised)
        text = PAPER.read_text(encoding="utf-8")
        quoted = re.search(r"“(Please describe this portrait image.*?)”", text, re.S).group(1)
        assert " ".join(quoted.replace("‘", "'").replace("’", "'").split()) == prompt


def test_run_attributes_backend_schema_and_values(tiny_params, faces, tmp_path):
    out = tmp_path / "captions"
    summary = caption.run(tiny_params, {"faces": faces}, out)
    frame = pd.read_parquet(out / "captions.parquet")
    assert list(frame.columns) == list(caption.COLUMNS)
    assert frame["id"].tolist() == sorted(f"syn{i:05d}" for i in range(10))
    manifest = pd.read_parquet(faces / "manifest.parquet").set_index("id")
    for row in frame.itertuples():
        expected = caption_from_attributes(json.loads(manifest.loc[row.id, "attributes"]))
        assert row.caption == expected  # hint or composed from attributes: the same text here
        assert row.caption.startswith("a photography of a") and len(row.caption.split()) < 100
    assert frame["valid"].all() and (frame["attempts"] == 1).all() and (frame["flag"] == "").all()
    assert summary["captioned"] == 10 and summary["valid"] == 10 and summary["flagged"] == 0
    assert summary["suite_checked"] == 10  # the great-expectations caption suite agreed on every valid row
    assert json.loads((out / "caption_report.json").read_text())["captioned"] == 10
    # Idempotent: a second run captions nothing new and writes the same bytes (the DVC hash holds)
    report = (out / "caption_report.json").read_bytes()
    assert summary["images_per_s"] > 0 and b"images_per_s" not in report
    again = caption.run(tiny_params, {"faces": faces}, out)
    assert again["captioned_this_run"] == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out / "captions.parquet"), frame)
    assert (out / "caption_report.json").read_bytes() == report


@pytest.mark.parametrize(
    ("text", "reason"),
    [("a photography of a man with short hair", ""), ("", "empty"), ("   ", "empty"),
     ("portrait of a man", "missing_prefix"), ("a photography of a " + "word " * 96, "too_long"),
     ("a photography of a " + "word " * 95, "")],
)
def test_invalid_reason(text, reason):
    rule = caption.CaptionRule("a photography of a", 100)
    assert caption.invalid_reason(text, rule) == reason
    assert caption.is_valid_caption(text, rule) == (reason == "")


def test_cross_check_catches_a_row_wrongly_marked_valid(tmp_path):
    rule = caption.CaptionRule("a photography of a", 100)
    rows = [{"id": "a", "caption": "a photography of a man", "valid": True, "attempts": 1, "flag": ""},
            {"id": "b", "caption": "no prefix here", "valid": False, "attempts": 2, "flag": "invalid:missing_prefix"}]
    pd.DataFrame(rows).to_parquet(tmp_path / "captions.parquet", index=False)
    assert caption.cross_check(tmp_path, rule) == 1  # flagged rows are not held to the suite
    rows[1]["valid"] = True
    pd.DataFrame(rows).to_parquet(tmp_path / "captions.parquet", index=False)
    with pytest.raises(RuntimeError, match="fail the caption suite"):
        caption.cross_check(tmp_path, rule)


def test_clean_caption_normalises_prefix_and_quotes():
    assert caption.clean_caption('  "A photography of a  woman\n smiling."  ', "a photography of a") == (
        "a photography of a woman smiling."
    )
    assert caption.clean_caption("A Photograph of a man", "a photography of a") == "A Photograph of a man"


class Scripted:
    """A captioner double: per attempt, a function of the item gives the text."""

    name = "scripted"
    needs_pixels = False

    def __init__(self, by_attempt):
        self.by_attempt = by_attempt
        self.calls: list[tuple[int, list[str]]] = []

    def caption(self, items, images, attempt):
        self.calls.append((attempt, [it.id for it in items]))
        return [self.by_attempt[min(attempt, len(self.by_attempt) - 1)](it) for it in items]


def _cfg_rule(params, **changes):
    cfg = dataclasses.replace(params.section("caption", caption.CaptionConfig), **changes)
    return cfg, caption.load_rule(params)


def test_invalid_caption_is_retried_once_then_valid(tiny_params, faces, tmp_path):
    items = caption.read_items(faces)
    bad_first = {items[1].id, items[4].id}
    double = Scripted([
        lambda it: "portrait, no prefix" if it.id in bad_first else f"a photography of a face {it.id}",
        lambda it: f"a photography of a retried face {it.id}",
    ])
    cfg, rule = _cfg_rule(tiny_params, batch_size=4)
    summary = caption.caption_items(double, items, tmp_path / "out", cfg, rule)
    frame = pd.read_parquet(tmp_path / "out" / "captions.parquet").set_index("id")
    assert summary["retried"] == 2 and summary["valid"] == 10 and summary["flagged"] == 0
    assert frame.loc[items[1].id, "caption"] == f"a photography of a retried face {items[1].id}"
    assert frame.loc[items[1].id, "attempts"] == 2 and frame.loc[items[0].id, "attempts"] == 1
    # Only the invalid ones are asked again.
    retries = [ids for attempt, ids in double.calls if attempt == 1]
    assert sorted(sum(retries, [])) == sorted(bad_first)


def test_always_invalid_caption_is_flagged_never_valid(tiny_params, faces, tmp_path):
    items = caption.read_items(faces)
    long = "a photography of a " + "very " * 120
    double = Scripted([lambda it: long if it.id == items[2].id else f"a photography of a face {it.id}"])
    cfg, rule = _cfg_rule(tiny_params, batch_size=3, max_attempts=2)
    summary = caption.caption_items(double, items, tmp_path / "out", cfg, rule)
    frame = pd.read_parquet(tmp_path / "out" / "captions.parquet").set_index("id")
    row = frame.loc[items[2].id]
    assert not row["valid"] and row["attempts"] == 2 and row["flag"] == "invalid:too_long"
    assert summary == {**summary, "captioned": 10, "valid": 9, "flagged": 1, "retried": 1,
                       "flags": {"invalid:too_long": 1}}


def test_faces_without_hint_or_attributes_are_flagged(tiny_params, tmp_path):
    faces = make_faces(tmp_path / "faces", 4, hint_every=1000)
    manifest = pd.read_parquet(faces / "manifest.parquet")
    manifest.loc[1, "attributes"] = "{}"
    manifest.loc[2, "attributes"] = json.dumps({"source_label": "celebrity"})  # not the synthetic schema
    manifest.to_parquet(faces / "manifest.parquet", index=False)
    summary = caption.run(tiny_params, {"faces": faces}, tmp_path / "out")
    assert summary["flagged"] == 2 and summary["flags"] == {"invalid:empty": 2}


def test_bad_image_error_names_the_file(tiny_params, faces, tmp_path):
    broken = faces / "images" / "syn00003.png"
    broken.write_bytes(b"not a png at all")
    items = caption.read_items(faces)
    double = Scripted([lambda it: "a photography of a face"])
    double.needs_pixels = True
    cfg, rule = _cfg_rule(tiny_params, batch_size=2)
    with pytest.raises(ValueError, match="syn00003.png"):
        caption.caption_items(double, items, tmp_path / "out", cfg, rule)
    # The batches before the bad one are kept; the bad one's batch is not half-written.
    rows = caption.read_shards(tmp_path / "out" / "shards")
    assert [r["id"] for r in rows] == [it.id for it in items[:2]]


def test_missing_manifest_and_changed_settings_are_clear_errors(tiny_params, faces, tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest"):
        caption.run(tiny_params, {"faces": tmp_path / "nowhere"}, tmp_path / "out")
    caption.run(tiny_params, {"faces": faces}, tmp_path / "out")
    other = tiny_params.with_overrides({"caption.max_attempts": 3})
    with pytest.raises(ConfigError, match="max_attempts"):
        caption.run(other, {"faces": faces}, tmp_path / "out")


_KILLED_SCRIPT = """
import sys, time
from pathlib import Path
from prefrestore.data import caption
from prefrestore.core.config import load

class Slow(caption.AttributeCaptioner):
    def caption(self, items, images, attempt):
        time.sleep(0.4)
        return super().caption(items, images, attempt)

params = load("tiny")
cfg, rule = params.section("caption", caption.CaptionConfig), caption.load_rule(params)
import dataclasses
cfg = dataclasses.replace(cfg, batch_size=3)
items = caption.read_items(Path(sys.argv[1]))
caption.caption_items(Slow(), items, Path(sys.argv[2]), cfg, rule)
"""


def test_sigkill_mid_run_resumes_exactly_once(tiny_params, tmp_path):
    faces = make_faces(tmp_path / "faces", 18)
    script = tmp_path / "slow_caption.py"
    script.write_text(textwrap.dedent(_KILLED_SCRIPT))
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(faces), str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list((killed / "shards").glob("[0-9]*.jsonl"))) < 2:
        assert proc.poll() is None, "the captioning subprocess ended before it was killed"
        time.sleep(0.02)
    time.sleep(0.1)  # land inside a batch
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = caption.read_shards(killed / "shards")
    assert 2 * 3 <= len(before) < 18, "the kill must land mid-run"
    assert not (killed / "captions.parquet").exists()
    # A write killed mid-way leaves only a temporary file; it is ignored and removed.
    (killed / "shards" / ".000099.jsonl.abc.tmp").write_text('{"id": "syn00000", "caption": "half')

    summary = caption.run(tiny_params, {"faces": faces}, killed)
    assert summary["captioned_this_run"] == 18 - len(before)
    rows = caption.read_shards(killed / "shards")
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == 18  # no duplicates, no gaps
    assert not list((killed / "shards").glob(".*.tmp"))

    clean = tmp_path / "clean"
    caption.run(tiny_params, {"faces": faces}, clean)
    pd.testing.assert_frame_equal(pd.read_parquet(killed / "captions.parquet"),
                                  pd.read_parquet(clean / "captions.parquet"))


def test_cli_caption_tiny(faces, tmp_path, capsys):
    from prefrestore.cli.main import main

    out = tmp_path / "cli_out"
    assert main(["caption", "--profile", "tiny", "--in", f"faces={faces}", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["captioned"] == 10 and summary["backend"] == "attributes"
    assert len(pd.read_parquet(out / "captions.parquet")) == 10


def test_config_ranges_are_checked(tiny_params):
    for key, value in [("batch_size", 0), ("max_attempts", 0), ("retry_top_p", 1.5)]:
        with pytest.raises(ConfigError, match=key):
            tiny_params.with_overrides({f"caption.{key}": value}).section("caption", caption.CaptionConfig)
    with pytest.raises(ConfigError, match="backend"):
        tiny_params.with_overrides({"caption.backend": "blip"}).section("caption", caption.CaptionConfig)
    assert np.isclose(load("paper").section("caption", caption.CaptionConfig).retry_top_p, 0.9)


def test_captions_loader(tmp_path: Path) -> None:
    import pandas as pd

    pd.DataFrame({"id": ["a", "b"], "caption": ["a photography of a man", "junk"], "valid": [True, False],
                  "attempts": [1, 2], "flag": ["", "prefix"]}).to_parquet(tmp_path / "captions.parquet")
    assert caption.load_captions(tmp_path) == {"a": "a photography of a man", "b": ""}
    with pytest.raises(FileNotFoundError, match="captions.parquet"):
        caption.load_captions(tmp_path / "nope")
