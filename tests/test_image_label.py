"""Weight-map captions stay inside the picture and readable at any size, with or without a scalable font."""

import numpy as np
import pytest
from PIL import Image, ImageFont

from lib_loratorio.image_label import draw_label

TEXT = "styles/ink_watercolour, step 3/20, image 12"


def labelled(side):
    image = Image.new("RGB", (side, side), (200, 120, 30))
    before = np.asarray(image).copy()
    label = draw_label(image, TEXT)
    return label, before, np.asarray(image)


def assert_inside(label, before, after):
    left, top, right, bottom = label.box
    height, width = before.shape[:2]
    assert 0 <= left < right < width and 0 <= top < bottom < height
    outside = np.ones(before.shape[:2], dtype=bool)
    outside[top:bottom + 1, left:right + 1] = False
    assert np.array_equal(before[outside], after[outside])          # nothing drawn beyond the box
    assert (after[top:bottom + 1, left:right + 1] > 128).any()       # and light text inside it


@pytest.mark.parametrize("side", [64, 128, 1024])
def test_the_label_fits_inside_the_image(side):
    label, before, after = labelled(side)
    assert_inside(label, before, after)
    if side == 1024:
        assert label.lines == [TEXT]
    else:                                                            # wrapped at spaces, a long word shortened
        assert len(label.lines) > 1 and label.lines[-1] == "image 12"


def test_the_font_grows_with_the_image():
    def line_height(side):
        label = labelled(side)[0]
        return (label.box[3] - label.box[1]) / len(label.lines)

    assert line_height(1024) > 3 * line_height(128)


@pytest.mark.parametrize("side", [64, 128, 1024])
def test_pillow_without_sized_default_font_still_fits(monkeypatch, side):
    """Pillow before 10.1: load_default() takes no size and gives its fixed bitmap font."""
    def load_default(*args, **kwargs):
        if args or kwargs:
            raise TypeError("load_default() got an unexpected keyword argument 'size'")
        return ImageFont.load_default_imagefont()

    monkeypatch.setattr(ImageFont, "load_default", load_default)
    assert_inside(*labelled(side))


def test_a_tiny_image_keeps_what_fits_and_marks_the_cut():
    image = Image.new("RGB", (64, 24), (0, 0, 0))
    label = draw_label(image, TEXT)
    assert label.lines[-1].endswith("...") and label.box[3] < 24
