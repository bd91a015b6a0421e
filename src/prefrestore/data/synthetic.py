"""Synthetic, aligned, face-like portraits with known attributes (the tiny profile's FFHQ stand-in).

Each face is drawn with Pillow at a supersampled canvas and shrunk with Lanczos, so it has real
high-frequency detail (hair strands, eyelashes, skin pores, fabric weave, teeth gaps) that the
degradation model (Eq. 16) destroys and a restoration model must learn to put back. The layout is
fixed like FFHQ alignment: eyes on one horizontal line at ~43% height, face centred.

Everything is deterministic in ``(seed, index)``: :func:`sample_attributes` draws the attributes
from one stream and :func:`render` the geometry/texture jitter from another, so the same pair
always gives the same pixels. :func:`caption_from_attributes` writes a caption in the paper's
style (Appendix D: starts with "a photography of a", under 100 words).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

GENERATOR_VERSION = 1  # bump when the pictures change; ingest's fingerprint includes it

SKIN_TONES = {  # name -> RGB
    "pale": (247, 224, 208), "fair": (238, 205, 180), "light": (226, 185, 150),
    "medium": (204, 156, 118), "olive": (183, 140, 96), "tan": (165, 115, 78),
    "brown": (125, 82, 55), "dark brown": (92, 60, 40), "deep": (64, 42, 30),
}
HAIR_COLOURS = {
    "black": (22, 18, 16), "dark brown": (58, 38, 26), "brown": (105, 70, 42),
    "blonde": (214, 178, 110), "red": (160, 62, 30), "auburn": (120, 48, 32),
    "grey": (150, 148, 145), "white": (228, 226, 222),
}
EYE_COLOURS = {
    "brown": (100, 62, 30), "dark brown": (55, 35, 20), "blue": (70, 120, 190),
    "green": (70, 130, 80), "hazel": (140, 110, 50), "grey": (120, 130, 140),
}
CLOTHING_COLOURS = {
    "white": (235, 235, 235), "black": (30, 30, 34), "navy": (30, 40, 90), "red": (170, 30, 40),
    "green": (40, 110, 60), "yellow": (220, 190, 60), "grey": (120, 120, 125), "purple": (100, 50, 130),
}
BACKGROUND_COLOURS = {
    "white": (240, 240, 240), "light grey": (200, 200, 205), "dark grey": (70, 70, 75),
    "light blue": (170, 200, 230), "teal": (40, 120, 120), "beige": (225, 210, 180),
    "pink": (235, 185, 195), "olive green": (120, 130, 70), "dark blue": (30, 40, 80),
}
HAIR_STYLES = ("bald", "buzz cut", "short", "bob", "long", "curly")
EXPRESSIONS = ("neutral", "smile", "smile with teeth")
GLASSES = ("none", "glasses", "sunglasses")
FACIAL_HAIR = ("none", "stubble", "beard", "moustache")
AGES = ("young", "middle-aged", "elderly")
ACCESSORIES = ("earrings", "hat", "necklace")


@dataclasses.dataclass(frozen=True)
class FaceAttributes:
    """What a synthetic face shows; every field is a key of the tables above or a flag."""

    gender: str  # "man" or "woman" (presentation)
    age: str  # one of AGES
    skin_tone: str  # key of SKIN_TONES
    hair_style: str  # one of HAIR_STYLES
    hair_color: str  # key of HAIR_COLOURS
    eye_color: str  # key of EYE_COLOURS
    glasses: str  # one of GLASSES
    expression: str  # one of EXPRESSIONS
    facial_hair: str  # one of FACIAL_HAIR ("none" for most women)
    lipstick: bool  # red lips
    freckles: bool  # freckles on the cheeks
    accessories: tuple[str, ...]  # subset of ACCESSORIES, in that order
    clothing_color: str  # key of CLOTHING_COLOURS
    background: str  # "plain" or "gradient"
    background_color: str  # key of BACKGROUND_COLOURS

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["accessories"] = list(self.accessories)
        return d


def _choice(rng: np.random.Generator, options: tuple[str, ...] | list[str], weights: list[float]) -> str:
    p = np.asarray(weights, dtype=float)
    return str(options[int(rng.choice(len(options), p=p / p.sum()))])


def sample_attributes(seed: int, index: int) -> FaceAttributes:
    """The attributes of face ``index`` under ``seed`` (deterministic)."""
    rng = np.random.default_rng([seed, index, 0])
    gender = "woman" if rng.random() < 0.5 else "man"
    woman = gender == "woman"
    age = _choice(rng, AGES, [0.45, 0.35, 0.2])
    skin = _choice(rng, list(SKIN_TONES), [1.0] * len(SKIN_TONES))
    style = _choice(rng, HAIR_STYLES, [0.01, 0.04, 0.14, 0.2, 0.45, 0.16] if woman else
                    [0.1, 0.25, 0.35, 0.05, 0.1, 0.15])
    if age == "elderly" and rng.random() < 0.7:
        hair = _choice(rng, ["grey", "white"], [0.6, 0.4])
    else:
        hair = _choice(rng, list(HAIR_COLOURS)[:6], [0.25, 0.25, 0.2, 0.15, 0.07, 0.08])
    eyes = _choice(rng, list(EYE_COLOURS), [0.3, 0.2, 0.2, 0.1, 0.1, 0.1])
    glasses = _choice(rng, GLASSES, [0.65, 0.25, 0.1])
    expression = _choice(rng, EXPRESSIONS, [0.35, 0.35, 0.3])
    facial_hair = "none" if woman else _choice(rng, FACIAL_HAIR, [0.5, 0.2, 0.2, 0.1])
    lipstick = bool(rng.random() < (0.4 if woman else 0.02))
    freckles = bool(rng.random() < 0.15)
    accessories = tuple(
        a for a, p in zip(ACCESSORIES, (0.35 if woman else 0.08, 0.12, 0.2 if woman else 0.05), strict=True)
        if rng.random() < p
    )
    clothing = _choice(rng, list(CLOTHING_COLOURS), [1.0] * len(CLOTHING_COLOURS))
    background = "gradient" if rng.random() < 0.5 else "plain"
    bg_colour = _choice(rng, list(BACKGROUND_COLOURS), [1.0] * len(BACKGROUND_COLOURS))
    return FaceAttributes(gender, age, skin, style, hair, eyes, glasses, expression, facial_hair, lipstick,
                          freckles, accessories, clothing, background, bg_colour)


# ----------------------------------------------------------------------------------------------
# Captions (Appendix D style)

_HAIR_PHRASE = {
    "bald": "a bald head",
    "buzz cut": "a {c} buzz cut",
    "short": "short {c} hair",
    "bob": "a {c} bob haircut",
    "long": "long straight {c} hair",
    "curly": "curly {c} hair",
}
_EXPRESSION_PHRASE = {
    "neutral": "a neutral expression",
    "smile": "a gentle closed-mouth smile",
    "smile with teeth": "a wide smile showing teeth",
}
_ACCESSORY_PHRASE = {"earrings": "gold earrings", "hat": "a knitted beanie hat", "necklace": "a gold necklace"}
_AGE_WORD = {"young": "young", "middle-aged": "middle-aged", "elderly": "senior"}  # "a photography of a ..."
_FACIAL_HAIR_PHRASE = {"stubble": "light stubble", "beard": "a full beard", "moustache": "a moustache"}


def caption_from_attributes(attrs: FaceAttributes | Mapping[str, Any]) -> str:
    """A caption like the paper's Qwen2.5-VL prompt asks for (Appendix D): "a photography of a ...", < 100 words."""
    a = attrs.to_dict() if isinstance(attrs, FaceAttributes) else dict(attrs)
    features = [f"{a['skin_tone']} skin", _HAIR_PHRASE[a["hair_style"]].format(c=a["hair_color"]),
                f"{a['eye_color']} eyes"]
    if a["facial_hair"] != "none":
        features.append(_FACIAL_HAIR_PHRASE[a["facial_hair"]])
    if a["freckles"]:
        features.append("freckles on the cheeks")
    if a["lipstick"]:
        features.append("red lipstick")
    features.append(_EXPRESSION_PHRASE[a["expression"]])
    worn = [{"glasses": "glasses", "sunglasses": "dark sunglasses"}[a["glasses"]]] if a["glasses"] != "none" else []
    worn += [_ACCESSORY_PHRASE[x] for x in a["accessories"]]
    worn.append(f"a {a['clothing_color']} top")
    bg = a["background_color"] + (" gradient" if a["background"] == "gradient" else "")
    text = (f"a photography of a {_AGE_WORD[a['age']]} {a['gender']} with {', '.join(features[:-1])} and {features[-1]}, "
            f"wearing {_join(worn)}, in front of {_article(bg)} {bg} background, centred front-facing portrait.")
    return text


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


# ----------------------------------------------------------------------------------------------
# Rendering


def _noise(rng: np.random.Generator, shape: tuple[int, int], amplitude: float, blur: float = 0.0) -> np.ndarray:
    n = rng.standard_normal(shape).astype(np.float32)
    if blur > 0:
        img = Image.fromarray(np.clip(n * 40 + 128, 0, 255).astype(np.uint8))
        n = (np.asarray(img.filter(ImageFilter.GaussianBlur(blur)), dtype=np.float32) - 128) / 40 * (1 + blur)
    return n * amplitude


def _layer(base: tuple[int, int, int], texture: np.ndarray) -> Image.Image:
    arr = np.asarray(base, dtype=np.float32)[None, None, :] + texture[..., None]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _shade(rgb: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(min(255, max(0, int(c * factor))) for c in rgb)  # type: ignore[return-value]


def render(attrs: FaceAttributes, resolution: int, seed: int, index: int) -> np.ndarray:
    """Draw the face as ``uint8 [resolution, resolution, 3]`` (deterministic in ``seed, index``)."""
    rng = np.random.default_rng([seed, index, 1])
    s = max(2 * resolution, 256)  # supersampled canvas side
    woman = attrs.gender == "woman"

    def px(v: float) -> int:
        return int(round(v * s))

    # geometry with a little jitter (alignment stays FFHQ-like)
    cx = 0.5 + rng.uniform(-0.01, 0.01)
    cy = 0.47 + rng.uniform(-0.01, 0.01)
    fw = (0.19 if woman else 0.215) * rng.uniform(0.96, 1.04)  # half-width of the face
    fh = 0.265 * rng.uniform(0.97, 1.03)  # half-height
    eye_y, eye_dx = cy - 0.04, 0.085
    skin = SKIN_TONES[attrs.skin_tone]
    hair = HAIR_COLOURS[attrs.hair_color]

    # 1. background: plain or vertical gradient, with faint grain
    bg = np.asarray(BACKGROUND_COLOURS[attrs.background_color], dtype=np.float32)
    if attrs.background == "gradient":
        t = np.linspace(0.0, 1.0, s, dtype=np.float32)[:, None, None]
        other = bg * rng.uniform(0.45, 0.7)
        canvas_arr = bg[None, None, :] * (1 - t) + other[None, None, :] * t
        canvas_arr = np.broadcast_to(canvas_arr, (s, s, 3))
    else:
        canvas_arr = np.broadcast_to(bg, (s, s, 3))
    canvas_arr = canvas_arr + _noise(rng, (s, s), 3.0)[..., None]
    canvas = Image.fromarray(np.clip(canvas_arr, 0, 255).astype(np.uint8))

    hair_tex = _hair_layer(rng, s, hair)
    # 2. long hair falls behind the shoulders
    if attrs.hair_style in ("long", "curly", "bob"):
        mask = Image.new("L", (s, s), 0)
        d = ImageDraw.Draw(mask)
        bottom = {"long": 0.86, "curly": 0.72, "bob": 0.64}[attrs.hair_style]
        spread = 1.35 if attrs.hair_style == "curly" else 1.18
        d.rounded_rectangle([px(cx - fw * spread), px(cy - fh * 1.12), px(cx + fw * spread), px(bottom)],
                            radius=px(fw * 0.9), fill=255)
        if attrs.hair_style == "curly":
            _curls(d, rng, cx, cy - fh * 0.3, fw * spread, fh * 1.1, px, count=60)
        canvas.paste(hair_tex, (0, 0), mask)

    # 3. clothing with a fabric weave, 4. neck
    cloth_mask = Image.new("L", (s, s), 0)
    ImageDraw.Draw(cloth_mask).ellipse([px(cx - 0.4), px(0.8), px(cx + 0.4), px(1.35)], fill=255)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    period = s / rng.uniform(60, 90)
    weave = 9.0 * np.sin(2 * np.pi * xx / period) * np.sin(2 * np.pi * yy / period) + _noise(rng, (s, s), 6.0)
    canvas.paste(_layer(CLOTHING_COLOURS[attrs.clothing_color], weave), (0, 0), cloth_mask)
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([px(cx - fw * 0.45), px(cy + fh * 0.6), px(cx + fw * 0.45), px(0.86)], fill=_shade(skin, 0.88))
    if "necklace" in attrs.accessories:
        for k in range(24):
            ang = np.pi * (0.15 + 0.7 * k / 23)
            x, y = cx + fw * 0.55 * np.cos(ang), 0.8 + 0.04 * np.sin(ang)
            draw.ellipse([px(x) - 2 * s // 512 - 1, px(y) - 2 * s // 512 - 1, px(x) + 2 * s // 512 + 1,
                          px(y) + 2 * s // 512 + 1], fill=(212, 175, 55))

    # 5. ears (+ earrings)
    for side in (-1, 1):
        ex = cx + side * fw * 0.98
        draw.ellipse([px(ex - 0.03), px(eye_y - 0.01), px(ex + 0.03), px(eye_y + 0.09)], fill=_shade(skin, 0.93))
        if "earrings" in attrs.accessories:
            draw.ellipse([px(ex - 0.012), px(eye_y + 0.09), px(ex + 0.012), px(eye_y + 0.115)],
                         outline=(212, 175, 55), width=max(1, s // 200))

    # 6. face with pores (+ freckles, wrinkles)
    face_mask = Image.new("L", (s, s), 0)
    ImageDraw.Draw(face_mask).ellipse([px(cx - fw), px(cy - fh), px(cx + fw), px(cy + fh)], fill=255)
    pores = _noise(rng, (s, s), 5.0) + _noise(rng, (s, s), 4.0, blur=s / 256)
    shading = -18.0 * ((xx / s - cx) / fw) ** 4  # darker towards the cheeks' edges
    canvas.paste(_layer(skin, pores + shading), (0, 0), face_mask)
    draw = ImageDraw.Draw(canvas)
    if attrs.freckles:
        for _ in range(40):
            x = cx + rng.choice([-1, 1]) * rng.uniform(0.03, 0.13)
            y = eye_y + rng.uniform(0.04, 0.1)
            r = rng.uniform(0.002, 0.004)
            draw.ellipse([px(x - r), px(y - r), px(x + r), px(y + r)], fill=_shade(skin, 0.75))
    if attrs.age == "elderly":
        for k in range(3):
            y = cy - fh * 0.7 + k * 0.015
            draw.arc([px(cx - 0.08), px(y), px(cx + 0.08), px(y + 0.04)], 200, 340,
                     fill=_shade(skin, 0.8), width=max(1, s // 400))

    # 7. eyebrows (strokes), eyes with iris, pupil, glint, eyelashes
    brow = _shade(hair, 0.8) if attrs.hair_color not in ("white", "grey") else (110, 105, 100)
    for side in (-1, 1):
        ex = cx + side * eye_dx
        for _ in range(40):
            t0 = rng.uniform(-1, 1)
            x0, y0 = ex + t0 * 0.045, eye_y - 0.05 - 0.012 * (1 - t0 * t0)
            draw.line([px(x0), px(y0), px(x0 + side * 0.012 * rng.uniform(0.5, 1)), px(y0 - 0.004)],
                      fill=brow, width=max(1, s // 300))
        ew, eh = 0.038, 0.018 * (0.8 if attrs.expression == "smile with teeth" else 1.0)
        draw.ellipse([px(ex - ew), px(eye_y - eh), px(ex + ew), px(eye_y + eh)], fill=(245, 245, 240))
        ir = 0.016
        draw.ellipse([px(ex - ir), px(eye_y - ir), px(ex + ir), px(eye_y + ir)], fill=EYE_COLOURS[attrs.eye_color])
        for k in range(12):  # iris fibres
            ang = 2 * np.pi * k / 12
            draw.line([px(ex + 0.006 * np.cos(ang)), px(eye_y + 0.006 * np.sin(ang)),
                       px(ex + ir * np.cos(ang)), px(eye_y + ir * np.sin(ang))],
                      fill=_shade(EYE_COLOURS[attrs.eye_color], 0.7), width=1)
        pr = 0.006
        draw.ellipse([px(ex - pr), px(eye_y - pr), px(ex + pr), px(eye_y + pr)], fill=(10, 10, 10))
        draw.ellipse([px(ex + 0.003), px(eye_y - 0.007), px(ex + 0.007), px(eye_y - 0.003)], fill=(255, 255, 255))
        draw.arc([px(ex - ew), px(eye_y - eh), px(ex + ew), px(eye_y + eh)], 180, 360, fill=(30, 20, 15),
                 width=max(1, s // 250))
        for k in range(9):  # eyelashes
            ang = np.pi * (1.1 + 0.8 * k / 8)
            x0, y0 = ex + ew * np.cos(ang), eye_y + eh * np.sin(ang)
            draw.line([px(x0), px(y0), px(x0 + 0.008 * np.cos(ang)), px(y0 + 0.01 * np.sin(ang))],
                      fill=(25, 18, 12), width=1)

    # 8. nose
    draw.line([px(cx), px(eye_y + 0.02), px(cx - 0.012), px(cy + 0.05)], fill=_shade(skin, 0.8), width=max(1, s // 300))
    draw.arc([px(cx - 0.025), px(cy + 0.035), px(cx + 0.025), px(cy + 0.06)], 20, 160, fill=_shade(skin, 0.7),
             width=max(1, s // 300))

    # 9. mouth
    lip = (170, 30, 45) if attrs.lipstick else _shade(skin, 0.72)
    my, mw = cy + 0.13, 0.06
    if attrs.expression == "neutral":
        draw.line([px(cx - mw), px(my), px(cx + mw), px(my)], fill=lip, width=max(2, s // 120))
    elif attrs.expression == "smile":
        draw.arc([px(cx - mw), px(my - 0.03), px(cx + mw), px(my + 0.02)], 15, 165, fill=lip, width=max(2, s // 110))
    else:
        draw.chord([px(cx - mw), px(my - 0.025), px(cx + mw), px(my + 0.035)], 0, 180, fill=(60, 15, 20), outline=lip,
                   width=max(2, s // 150))
        draw.rectangle([px(cx - mw * 0.8), px(my + 0.002), px(cx + mw * 0.8), px(my + 0.02)], fill=(245, 243, 235))
        for k in range(-4, 5):  # gaps between teeth
            x = cx + k * mw * 0.17
            draw.line([px(x), px(my + 0.002), px(x), px(my + 0.02)], fill=(175, 168, 160), width=1)

    # 10. facial hair: stubble dots / beard strands / moustache
    if attrs.facial_hair in ("stubble", "beard"):
        n = 500 if attrs.facial_hair == "stubble" else 1400
        for _ in range(n):
            ang = rng.uniform(0.1 * np.pi, 0.9 * np.pi)
            r = rng.uniform(0.55, 1.0)
            x, y = cx + fw * r * np.cos(ang) * 0.95, cy + fh * r * np.sin(ang) * 0.98
            if y < my - 0.02 and attrs.facial_hair == "stubble":
                continue
            length = 0.004 if attrs.facial_hair == "stubble" else 0.014
            draw.line([px(x), px(y), px(x + rng.uniform(-0.3, 0.3) * length), px(y + length)],
                      fill=_shade(hair, rng.uniform(0.8, 1.2)), width=1)
    if attrs.facial_hair in ("moustache", "beard"):
        for _ in range(150):
            x = cx + rng.uniform(-mw, mw)
            y = my - rng.uniform(0.012, 0.03)
            draw.line([px(x), px(y), px(x + np.sign(x - cx) * 0.006), px(y + 0.008)], fill=_shade(hair, 0.9), width=1)

    # 11. hair on top of the head
    if attrs.hair_style != "bald":
        mask = Image.new("L", (s, s), 0)
        d = ImageDraw.Draw(mask)
        top = cy - fh * (1.12 if attrs.hair_style != "buzz cut" else 1.03)
        d.chord([px(cx - fw * 1.06), px(top), px(cx + fw * 1.06), px(cy + fh * 0.2)], 180, 360, fill=255)
        if attrs.hair_style in ("long", "bob", "curly"):  # strands down the sides of the face
            for side in (-1, 1):
                d.rectangle([px(cx + side * fw * 0.9 - fw * 0.22), px(cy - fh * 0.4),
                             px(cx + side * fw * 0.9 + fw * 0.22), px(cy + fh * 0.35)], fill=255)
        if attrs.hair_style == "curly":
            _curls(d, rng, cx, cy - fh * 0.75, fw * 1.1, fh * 0.45, px, count=40)
        canvas.paste(hair_tex if attrs.hair_style != "buzz cut" else _layer(hair, _noise(rng, (s, s), 14.0)),
                     (0, 0), mask)
    draw = ImageDraw.Draw(canvas)

    # 12. hat, glasses
    if "hat" in attrs.accessories:
        hat = CLOTHING_COLOURS[attrs.clothing_color]
        hat_mask = Image.new("L", (s, s), 0)
        ImageDraw.Draw(hat_mask).chord([px(cx - fw * 1.12), px(cy - fh * 1.35), px(cx + fw * 1.12),
                                        px(cy - fh * 0.25)], 180, 360, fill=255)
        knit = 12.0 * np.sin(2 * np.pi * xx / (s / 70)) + _noise(rng, (s, s), 6.0)
        canvas.paste(_layer(_shade(hat, 0.9), knit), (0, 0), hat_mask)
        draw = ImageDraw.Draw(canvas)
        draw.rectangle([px(cx - fw * 1.12), px(cy - fh * 0.78), px(cx + fw * 1.12), px(cy - fh * 0.62)],
                       fill=_shade(hat, 0.7))
    if attrs.glasses != "none":
        gw = max(2, s // 140)
        for side in (-1, 1):
            ex = cx + side * eye_dx
            box = [px(ex - 0.052), px(eye_y - 0.035), px(ex + 0.052), px(eye_y + 0.035)]
            if attrs.glasses == "sunglasses":
                draw.rounded_rectangle(box, radius=px(0.02), fill=(20, 22, 28), outline=(5, 5, 5), width=gw)
                draw.line([px(ex - 0.03), px(eye_y - 0.02), px(ex - 0.01), px(eye_y - 0.028)], fill=(120, 125, 135), width=gw)
            else:
                draw.rounded_rectangle(box, radius=px(0.02), outline=(25, 25, 25), width=gw)
        draw.line([px(cx - eye_dx + 0.052), px(eye_y - 0.01), px(cx + eye_dx - 0.052), px(eye_y - 0.01)],
                  fill=(25, 25, 25), width=gw)

    small = canvas.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return np.asarray(small, dtype=np.uint8)


def _hair_layer(rng: np.random.Generator, s: int, hair: tuple[int, int, int]) -> Image.Image:
    """Hair colour with many thin, slightly curved strands of varying brightness."""
    layer = _layer(hair, _noise(rng, (s, s), 8.0))
    d = ImageDraw.Draw(layer)
    n = max(300, s)
    xs, ys = rng.uniform(0, s, n), rng.uniform(0, s, n)
    lengths = rng.uniform(0.05, 0.15, n) * s
    bends = rng.uniform(-0.3, 0.3, n)
    shades = rng.uniform(0.6, 1.5, n)
    lifted = tuple(max(c, 25) for c in hair)  # so that black hair still shows lighter strands
    for x, y, length, bend, shade in zip(xs.tolist(), ys.tolist(), lengths.tolist(), bends.tolist(),
                                         shades.tolist(), strict=True):
        pts = [(x + bend * length * (k / 4) ** 2, y + length * k / 4) for k in range(5)]
        d.line(pts, fill=_shade(lifted, shade), width=1)  # type: ignore[arg-type]
    return layer


def _curls(d: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float, rx: float, ry: float,
           px: Any, count: int) -> None:
    for _ in range(count):
        ang = rng.uniform(0, 2 * np.pi)
        x, y = cx + rx * np.cos(ang), cy + ry * np.sin(ang)
        r = rng.uniform(0.02, 0.04)
        d.ellipse([px(x - r), px(y - r), px(x + r), px(y + r)], fill=255)


def make_face(seed: int, index: int, resolution: int) -> tuple[np.ndarray, FaceAttributes]:
    """Face ``index`` under ``seed``: ``(uint8 [resolution, resolution, 3], attributes)``."""
    attrs = sample_attributes(seed, index)
    return render(attrs, resolution, seed, index), attrs
