"""A caption written into a picture so that it stays readable and whole at any picture size."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

_ELLIPSIS = "..."


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's own font at ``size`` px (Pillow >= 10.1 with FreeType); older Pillow has only its fixed
    bitmap font, whose lines are then wrapped and shortened the same way."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


@dataclass
class Label:
    box: tuple[int, int, int, int]  # (left, top, right, bottom) of the dark box, inside the picture
    lines: list[str]  # the text as drawn: wrapped, shortened with "..." where it did not fit


def draw_label(image: Image.Image, text: str) -> Label:
    """Write ``text`` on a dark box in the top-left corner of ``image``, in a font scaled with the image,
    wrapped at spaces and shortened with "..." where it would not fit."""
    side = min(image.size)
    pad = max(1, side // 128)
    draw = ImageDraw.Draw(image)
    font = _font(max(8, side // 24))
    room = image.width - 4 * pad
    lines = _wrap(draw, font, text, room)
    line_height = draw.textbbox((0, 0), "Ag", font=font)[3] + pad
    max_lines = max(1, (image.height - 4 * pad) // line_height)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = _shorten(draw, font, lines[-1], room, always=True)
    boxes = [draw.textbbox((2 * pad, 2 * pad + i * line_height), line, font=font) for i, line in enumerate(lines)]
    box = (pad, pad, min(image.width - 1, max(b[2] for b in boxes) + pad),
           min(image.height - 1, max(b[3] for b in boxes) + pad))
    draw.rectangle(box, fill=(0, 0, 0))
    for i, line in enumerate(lines):
        draw.text((2 * pad, 2 * pad + i * line_height), line, font=font, fill=(255, 255, 255))
    return Label(box, lines)


def _width(draw: ImageDraw.ImageDraw, font, text: str) -> float:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return right - left


def _wrap(draw: ImageDraw.ImageDraw, font, text: str, room: float) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        joined = f"{lines[-1]} {word}" if lines else word
        if lines and _width(draw, font, joined) <= room:
            lines[-1] = joined
        else:
            lines.append(_shorten(draw, font, word, room))
    return lines or [""]


def _shorten(draw: ImageDraw.ImageDraw, font, text: str, room: float, always: bool = False) -> str:
    """``text``, or as much of it as fits followed by "..." (always followed by it with ``always``)."""
    if not always and _width(draw, font, text) <= room:
        return text
    while text and _width(draw, font, text + _ELLIPSIS) > room:
        text = text[:-1]
    return text + _ELLIPSIS
