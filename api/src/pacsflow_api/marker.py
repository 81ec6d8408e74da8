"""The finding marker drawn over a key image (the router stores the image without it, so the panel can toggle it)."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw


def with_marker(png: bytes, row_fraction: float, col_fraction: float) -> bytes:
    """``png`` in colour with a ring around (row, col) given as fractions of the image's height and width."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    width, height = image.size
    x, y = col_fraction * (width - 1), row_fraction * (height - 1)
    radius = max(6.0, min(width, height) / 12)
    draw = ImageDraw.Draw(image)
    draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=(255, 200, 0), width=2)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
