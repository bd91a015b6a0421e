"""Synthetic faces: deterministic, varied, and the pixels and captions agree with the attributes."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from prefrestore.data import synthetic as S

R = 96


def test_deterministic_per_seed_and_index():
    a, attrs_a = S.make_face(7, 3, R)
    b, attrs_b = S.make_face(7, 3, R)
    assert a.dtype == np.uint8 and a.shape == (R, R, 3)
    np.testing.assert_array_equal(a, b)
    assert attrs_a == attrs_b
    assert not np.array_equal(a, S.make_face(7, 4, R)[0])
    assert not np.array_equal(a, S.make_face(8, 3, R)[0])


def test_attributes_vary_across_a_set():
    attrs = [S.sample_attributes(0, i) for i in range(200)]
    for field, options in [("gender", ("man", "woman")), ("skin_tone", S.SKIN_TONES), ("hair_style", S.HAIR_STYLES),
                           ("eye_color", S.EYE_COLOURS), ("glasses", S.GLASSES), ("expression", S.EXPRESSIONS),
                           ("background", ("plain", "gradient"))]:
        assert {getattr(a, field) for a in attrs} == set(options), field
    assert {x for a in attrs for x in a.accessories} == set(S.ACCESSORIES)
    assert all(a.facial_hair == "none" for a in attrs if a.gender == "woman")


def test_images_have_high_frequency_detail():
    img = S.make_face(0, 1, 256)[0].astype(float).mean(axis=2)
    lap = np.abs(4 * img[1:-1, 1:-1] - img[:-2, 1:-1] - img[2:, 1:-1] - img[1:-1, :-2] - img[1:-1, 2:])
    assert lap.mean() > 2.0  # strands, pores, weave: not flat cartoon regions


def _variant(index: int, **changes) -> np.ndarray:
    attrs = dataclasses.replace(S.sample_attributes(0, index), **changes)
    return S.render(attrs, R, 0, index).astype(float)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_pixels_follow_the_attributes(index):
    base = dict(glasses="none", expression="neutral", facial_hair="none", freckles=False, background="plain",
                accessories=())
    plain = _variant(index, **base)
    # background colour in the corner
    bg = np.array(S.BACKGROUND_COLOURS[S.sample_attributes(0, index).background_color])
    assert np.abs(plain[1, 1] - bg).max() <= 12
    # skin tone on the cheek
    skin = np.array(S.SKIN_TONES[S.sample_attributes(0, index).skin_tone])
    assert np.abs(plain[int(0.52 * R), int(0.58 * R)] - skin).max() <= 15
    eyes = (slice(int(0.40 * R), int(0.46 * R)), slice(int(0.37 * R), int(0.63 * R)))
    assert _variant(index, **{**base, "glasses": "sunglasses"})[eyes].mean() < plain[eyes].mean() - 30
    mouth = (slice(int(0.58 * R), int(0.64 * R)), slice(int(0.44 * R), int(0.56 * R)))
    teeth = _variant(index, **{**base, "expression": "smile with teeth"})

    def white(img: np.ndarray) -> int:  # bright and unsaturated: teeth, not pale skin
        lo, hi = img[mouth].min(axis=2), img[mouth].max(axis=2)
        return int(((lo > 190) & (hi - lo < 25)).sum())

    assert white(teeth) >= 4 and white(plain) == 0


def test_caption_matches_attributes():
    for i in range(100):
        a = S.sample_attributes(0, i)
        c = S.caption_from_attributes(a)
        assert c.startswith("a photography of a ") and len(c.split()) < 100
        assert c == S.caption_from_attributes(a.to_dict())  # also from the manifest's JSON
        assert f" {a.gender} " in c and f"{a.skin_tone} skin" in c and f"{a.eye_color} eyes" in c
        assert ("bald" in c) == (a.hair_style == "bald")
        if a.hair_style != "bald":
            assert re.search(rf"{a.hair_color} (hair|bob|buzz)", c)
        assert ("sunglasses" in c) == (a.glasses == "sunglasses")
        assert ("glasses" in c) == (a.glasses != "none")
        assert ("teeth" in c) == (a.expression == "smile with teeth")
        assert ("earrings" in c) == ("earrings" in a.accessories)
        assert ("hat" in c) == ("hat" in a.accessories)
        assert ("necklace" in c) == ("necklace" in a.accessories)
        assert (a.background_color in c) and (("gradient" in c) == (a.background == "gradient"))
