"""A small synthetic action dataset in the VOC-2012 action layout (`vgg synth --action`).

Each image shows one or two stick "persons" (a head, a body, legs) on a noisy
background; each person does one action, marked by what it holds or where its arm
points. With two persons doing different actions in one image, the whole image
alone cannot say which person does what: the person's box can, which is what
Table 12's second setting (image and box descriptors stacked) adds.

    OUT/JPEGImages/<id>.jpg
    OUT/Annotations/<id>.xml                   person objects with <bndbox> and <actions>
    OUT/ImageSets/Action/<action>_{train,val,trainval}.txt and {train,val,trainval}.txt
    OUT/synthetic.json
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from vggnet.data.synthetic import prepare_output
from vggnet.errors import UserError

__all__ = ["ACTIONS", "write_actions"]

#: what each synthetic action looks like (`_draw_person`)
ACTIONS = ("holding-ball", "holding-stick", "pointing-up", "pointing-sideways")


def _draw_person(draw: ImageDraw.ImageDraw, rng: np.random.Generator, x: float, foot: float, height: float,
                 action: str, colour: tuple[int, int, int]) -> tuple[float, float, float, float]:
    """One stick person standing at (x, foot), `height` px tall; returns its box (x0, y0, x1, y1)."""
    head = 0.12 * height
    width = max(1, int(round(0.06 * height)))
    top = foot - height
    neck, hip = top + 2 * head, foot - 0.45 * height
    shoulder = neck + 0.08 * height
    side = 1 if rng.random() < 0.5 else -1
    draw.ellipse([x - head, top, x + head, top + 2 * head], fill=colour)
    draw.line([(x, neck), (x, hip)], fill=colour, width=width)
    for s in (-1, 1):
        draw.line([(x, hip), (x + s * 0.18 * height, foot)], fill=colour, width=width)
    arm = 0.3 * height
    points = [(x - head, top), (x + head, foot)]
    if action == "pointing-up":
        hand = (x + side * 0.5 * arm, shoulder - 0.9 * arm)
    elif action == "pointing-sideways":
        hand = (x + side * arm, shoulder)
    else:  # holding something in front, arm down and out
        hand = (x + side * 0.6 * arm, shoulder + 0.7 * arm)
    draw.line([(x, shoulder), hand], fill=colour, width=width)
    draw.line([(x, shoulder), (x - side * 0.4 * arm, shoulder + 0.8 * arm)], fill=colour, width=width)
    points.append(hand)
    held = tuple(int(255 - c) for c in colour)
    if action == "holding-ball":
        r = 0.1 * height
        draw.ellipse([hand[0] - r, hand[1] - r, hand[0] + r, hand[1] + r], fill=held)
        points += [(hand[0] - r, hand[1] - r), (hand[0] + r, hand[1] + r)]
    elif action == "holding-stick":
        end = (hand[0] + side * 0.05 * height, hand[1] - 0.55 * height)
        draw.line([hand, end], fill=held, width=width)
        points.append(end)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return min(xs) - width, min(ys) - width, max(xs) + width, max(ys) + width


def _render(seed: int, index: int, size: tuple[int, int]) -> tuple[Image.Image, list[tuple[str, tuple]]]:
    rng = np.random.default_rng([seed, 5, index])
    w, h = int(size[0] * 1.5), size[0]
    base = rng.integers(0, 256, 3)
    noise = rng.integers(-30, 31, (h // 8 + 1, w // 8 + 1, 3))
    field = np.clip(base + noise.repeat(8, 0).repeat(8, 1)[:h, :w], 0, 255).astype(np.uint8)
    img = Image.fromarray(field, "RGB")
    draw = ImageDraw.Draw(img)
    n = 1 if rng.random() < 0.5 else 2
    actions = rng.choice(len(ACTIONS), n, replace=False)
    people = []
    for k, a in enumerate(actions):
        height = float(rng.uniform(0.55, 0.8)) * h
        x = (k + 0.5) * w / n + float(rng.uniform(-0.08, 0.08)) * w
        colour = tuple(int(v) for v in (base + 128 + rng.integers(-40, 41, 3)) % 256)
        box = _draw_person(draw, rng, x, h - 0.05 * h, height, ACTIONS[int(a)], colour)
        box = (max(0.0, box[0]), max(0.0, box[1]), min(float(w), box[2]), min(float(h), box[3]))
        people.append((ACTIONS[int(a)], box))
    return img, people


def _xml(filename: str, size: tuple[int, int], people: list[tuple[str, tuple]]) -> str:
    objs = ""
    for action, (x0, y0, x1, y1) in people:
        flags = "".join(f"<{a}>{int(a == action)}</{a}>" for a in ACTIONS)
        objs += (f"  <object>\n    <name>person</name>\n    <bndbox>\n      <xmin>{int(math.floor(x0)) + 1}</xmin>\n"
                 f"      <ymin>{int(math.floor(y0)) + 1}</ymin>\n      <xmax>{int(math.ceil(x1))}</xmax>\n"
                 f"      <ymax>{int(math.ceil(y1))}</ymax>\n    </bndbox>\n    <actions>{flags}</actions>\n"
                 f"  </object>\n")
    return (f"<annotation>\n  <filename>{filename}</filename>\n  <size><width>{size[0]}</width>"
            f"<height>{size[1]}</height><depth>3</depth></size>\n{objs}</annotation>\n")


def write_actions(out: str | os.PathLike, train: int = 200, val: int = 100, seed: int = 0, force: bool = False, *,
                  image_size: int = 96, quality: int = 90) -> dict[str, Any]:
    """Write `train` + `val` images (trainval = both) in the VOC-2012 action layout; returns the parameters."""
    out = prepare_output(out, force, ("JPEGImages", "Annotations", "ImageSets"), ())
    for n, flag in ((train, "--train"), (val, "--val")):
        if n < 1:
            raise UserError(f"{flag}: expected a number of images >= 1, got {n}")
    if image_size < 32:
        raise UserError(f"--min-size: the action images need a side >= 32 px, got {image_size}")
    for sub in ("JPEGImages", "Annotations", "ImageSets/Action"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    lists: dict[str, dict[str, list[str]]] = {s: {a: [] for a in ACTIONS} for s in ("train", "val")}
    ids: dict[str, list[str]] = {"train": [], "val": []}
    for i in range(train + val):
        split = "train" if i < train else "val"
        image_id = f"2012_{i + 1:06d}"
        img, people = _render(seed, i, (image_size, image_size))
        img.save(out / "JPEGImages" / f"{image_id}.jpg", quality=quality)
        (out / "Annotations" / f"{image_id}.xml").write_text(_xml(f"{image_id}.jpg", img.size, people),
                                                             encoding="utf-8")
        ids[split].append(image_id)
        for k, (action, _) in enumerate(people, 1):
            for a in ACTIONS:
                lists[split][a].append(f"{image_id} {k} {1 if a == action else -1}")
    folder = out / "ImageSets" / "Action"
    for split in ("train", "val", "trainval"):
        parts = ("train", "val") if split == "trainval" else (split,)
        (folder / f"{split}.txt").write_text("".join(f"{i}\n" for p in parts for i in ids[p]), encoding="utf-8")
        for a in ACTIONS:
            (folder / f"{a}_{split}.txt").write_text("".join(f"{x}\n" for p in parts for x in lists[p][a]),
                                                     encoding="utf-8")
    params = {"kind": "actions", "train": train, "val": val, "seed": seed, "image_size": image_size,
              "actions": list(ACTIONS)}
    (out / "synthetic.json").write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")
    return params
