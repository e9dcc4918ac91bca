#!/usr/bin/env python3
"""Writes the PIL resize fixture used by guided-diffusion/tests/data_resize.rs.

For each case: an input PNG (made-up content: coloured blocks, gradients, sharp edges, noise) and
the PNG of what Pillow produces, by the reference's `center_crop_arr` (image_datasets.py,
re-implemented here in its own words) or by a single `Image.resize` with BOX or BICUBIC.
Pillow and numpy are the only requirements. Run from the repository root:

    python3 tools/make_resize_fixture.py
"""
import json
import os

import numpy as np
from PIL import Image

OUT = os.path.join("guided-diffusion", "tests", "fixtures", "resize")


def made_up(w, h, channels, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    blocks = rng.integers(0, 256, size=(h // 5 + 1, w // 5 + 1, channels))
    img = blocks[yy // 5, xx // 5].astype(np.float64)
    grad = (xx * 255.0 / max(w - 1, 1))[..., None]
    img = np.where(((xx // 9 + yy // 7) % 3 == 0)[..., None], grad, img)
    img[: h // 4] = 255 * (((xx[: h // 4] // 3) % 2)[..., None])  # hard stripes: overshoot
    img += rng.normal(0, 6, size=img.shape)
    arr = np.clip(np.round(img), 0, 255).astype(np.uint8)
    if channels == 1:
        return Image.fromarray(arr[..., 0], mode="L")
    return Image.fromarray(arr, mode="RGB")


def center_crop_arr(pil_image, image_size):
    # The reference's rule: box-halve while the short side is >= 2x, bicubic to the short side,
    # centre crop.
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(
        tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC
    )
    arr = np.array(pil_image)
    cy = (arr.shape[0] - image_size) // 2
    cx = (arr.shape[1] - image_size) // 2
    return arr[cy : cy + image_size, cx : cx + image_size]


CASES = [
    # name, (w, h), channels, op, arg
    ("cc_down", (70, 50), 3, "center_crop", 32),
    ("cc_halve", (150, 97), 3, "center_crop", 32),
    ("cc_up", (20, 13), 3, "center_crop", 32),
    ("cc_halve_exact", (129, 260), 3, "center_crop", 64),
    ("cc_gray_up", (28, 28), 1, "center_crop", 64),
    ("cc_gray_down", (28, 28), 1, "center_crop", 12),
    ("cc_round_half", (20, 8), 3, "center_crop", 5),  # 20 * 5/8 = 12.5 -> 12 (half to even)
    ("box_odd", (101, 77), 3, "box", (50, 38)),
    # Width shrinks, height grows. (Pillow >= 13 runs the vertical pass first when the height
    # shrinks much more than the width, python-pillow/Pillow#9549; Pillow before 13, the one the
    # reference was written against, always runs horizontal then vertical, as our code does. The
    # cases here are ones where both orders agree.)
    ("bicubic_mixed", (47, 33), 3, "bicubic", (19, 80)),
]


def main():
    os.makedirs(OUT, exist_ok=True)
    meta = []
    for i, (name, (w, h), c, op, arg) in enumerate(CASES):
        img = made_up(w, h, c, seed=1000 + i)
        img.save(os.path.join(OUT, f"{name}_in.png"))
        if op == "center_crop":
            out = center_crop_arr(img, arg)
        elif op == "box":
            out = np.array(img.resize(arg, resample=Image.BOX))
        else:
            out = np.array(img.resize(arg, resample=Image.BICUBIC))
        Image.fromarray(out).save(os.path.join(OUT, f"{name}_out.png"))
        meta.append({"name": name, "op": op, "arg": arg, "in_size": [w, h], "channels": c,
                     "out_shape": list(out.shape)})
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump({"pillow": Image.__version__ if hasattr(Image, "__version__") else "",
                   "cases": meta}, f, indent=1)


if __name__ == "__main__":
    main()
