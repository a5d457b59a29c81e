"""Procedurally drawn non-digit shapes: the objects of digits-det's far-OOD splits.

A shape is drawn in two steps, so that its random parameters are drawn before its size is
known (the same order as a digit glyph, see :mod:`vos_det.data.digits_det`):

1. ``sample_shape(kind, rng)`` draws its parameters as a list of drawing primitives in unit
   coordinates (the shape's square is [0, 1] x [0, 1]);
2. ``render_shape(primitives, side)`` rasterises them at 4x supersampling and area-averages
   down to a (side, side) opacity mask in [0, 1].

Kinds (disjoint sets, so that no hyperparameter is chosen on the shapes it is tested on):

- :data:`TEST_SHAPES`: polygon, star, cross, ring, arrow, scribble, hatched_blob
  (``digits_det_far_ood``);
- :data:`VALIDATION_SHAPES`: crescent, spiral, zigzag, lattice (``digits_det_ood_val``).

Every shape spans most of its square, like a load_digits glyph does.
"""
import math
from typing import Callable, Dict, List, NamedTuple, Sequence, Tuple

import numpy as np
from PIL import Image, ImageChops, ImageDraw

__all__ = ["TEST_SHAPES", "VALIDATION_SHAPES", "Primitive", "render_shape", "sample_shape"]

TEST_SHAPES = ("polygon", "star", "cross", "ring", "arrow", "scribble", "hatched_blob")
VALIDATION_SHAPES = ("crescent", "spiral", "zigzag", "lattice")

Point = Tuple[float, float]

# Shapes are rasterised at this multiple of their final side, then area-averaged down.
_SUPERSAMPLING = 4
_OPAQUE = 255
_CENTRE = (0.5, 0.5)
# Radius of the circle (unit coordinates) most shapes are inscribed in.
_RADIUS_RANGE = (0.32, 0.45)
# Stroke width of line shapes, as a fraction of the square's side.
_STROKE_WIDTH_RANGE = (0.06, 0.1)


class Primitive(NamedTuple):
    """One drawing operation in unit coordinates.

    ``kind`` is "polygon" (filled), "line" (a polyline of ``width``), "ellipse" (``points``
    are two corners; filled if ``width`` is 0, else an outline) or "hatch" (parallel lines of
    ``width`` every ``spacing`` at ``angle`` radians, clipped to the polygon ``points``).
    ``value`` is the opacity drawn, 255 or 0 (0 erases).
    """

    kind: str
    points: Tuple[Point, ...]
    width: float = 0.0
    value: int = _OPAQUE
    spacing: float = 0.0
    angle: float = 0.0


def _rotate(points: Sequence[Point], angle: float, centre: Point = _CENTRE) -> Tuple[Point, ...]:
    """Rotate points by ``angle`` radians about ``centre``."""
    cos, sin = math.cos(angle), math.sin(angle)
    cx, cy = centre
    return tuple((cx + (x - cx) * cos - (y - cy) * sin, cy + (x - cx) * sin + (y - cy) * cos) for x, y in points)


def _circle_points(radii: np.ndarray, angles: np.ndarray) -> Tuple[Point, ...]:
    """Points at the given radii and angles around the centre."""
    return tuple((_CENTRE[0] + r * math.cos(a), _CENTRE[1] + r * math.sin(a)) for r, a in zip(radii, angles))


def _rectangle(x0: float, y0: float, x1: float, y1: float) -> Tuple[Point, ...]:
    return ((x0, y0), (x1, y0), (x1, y1), (x0, y1))


def _stroke(rng: np.random.Generator) -> float:
    return float(rng.uniform(*_STROKE_WIDTH_RANGE))


def _irregular_polygon(rng: np.random.Generator, num_vertices: int, radius_jitter: float) -> Tuple[Point, ...]:
    """A star-shaped polygon: sorted random angles, radii jittered below the outer radius."""
    radius = rng.uniform(*_RADIUS_RANGE)
    angles = np.sort(rng.uniform(0.0, 2.0 * math.pi, size=num_vertices))
    radii = radius * rng.uniform(1.0 - radius_jitter, 1.0, size=num_vertices)
    return _circle_points(radii, angles)


def _polygon(rng):
    # A regular polygon whose vertices are jittered in angle and radius.
    num_vertices = int(rng.integers(3, 8, endpoint=True))
    radius = rng.uniform(*_RADIUS_RANGE)
    angles = rng.uniform(0.0, 2.0 * math.pi) + np.arange(num_vertices) * 2.0 * math.pi / num_vertices
    angles = angles + rng.uniform(-0.2, 0.2, size=num_vertices)
    radii = radius * rng.uniform(0.8, 1.0, size=num_vertices)
    return [Primitive("polygon", _circle_points(radii, angles))]


def _star(rng):
    num_points = int(rng.integers(5, 8, endpoint=True))
    outer = rng.uniform(*_RADIUS_RANGE)
    inner = outer * rng.uniform(0.35, 0.55)
    angles = rng.uniform(0.0, 2.0 * math.pi) + np.arange(2 * num_points) * math.pi / num_points
    radii = np.where(np.arange(2 * num_points) % 2 == 0, outer, inner)
    return [Primitive("polygon", _circle_points(radii, angles))]


def _cross(rng):
    # A plus sign, or an X when rotated by about 45 degrees.
    half_length = rng.uniform(*_RADIUS_RANGE)
    half_thickness = rng.uniform(0.07, 0.12)
    angle = rng.choice([0.0, math.pi / 4]) + rng.uniform(-0.15, 0.15)
    bars = (
        _rectangle(0.5 - half_length, 0.5 - half_thickness, 0.5 + half_length, 0.5 + half_thickness),
        _rectangle(0.5 - half_thickness, 0.5 - half_length, 0.5 + half_thickness, 0.5 + half_length),
    )
    return [Primitive("polygon", _rotate(bar, angle)) for bar in bars]


def _ring(rng):
    radius = rng.uniform(*_RADIUS_RANGE)
    aspect = rng.uniform(0.7, 1.0)
    rx, ry = (radius, radius * aspect) if rng.random() < 0.5 else (radius * aspect, radius)
    corners = ((0.5 - rx, 0.5 - ry), (0.5 + rx, 0.5 + ry))
    return [Primitive("ellipse", corners, width=float(rng.uniform(0.07, 0.14)))]


def _arrow(rng):
    # A shaft and a triangular head pointing right, then rotated.
    half_length = rng.uniform(*_RADIUS_RANGE)
    half_shaft = rng.uniform(0.05, 0.08)
    head_length = half_length * rng.uniform(0.5, 0.8)
    half_head = rng.uniform(0.18, 0.28)
    head_base = 0.5 + half_length - head_length
    shaft = _rectangle(0.5 - half_length, 0.5 - half_shaft, head_base, 0.5 + half_shaft)
    head = ((head_base, 0.5 - half_head), (0.5 + half_length, 0.5), (head_base, 0.5 + half_head))
    angle = rng.uniform(0.0, 2.0 * math.pi)
    return [Primitive("polygon", _rotate(shaft, angle)), Primitive("polygon", _rotate(head, angle))]


def _scribble(rng):
    # A random walk of 6 to 12 points kept inside the square.
    num_points = int(rng.integers(6, 12, endpoint=True))
    steps = rng.normal(0.0, 0.22, size=(num_points, 2))
    points = np.clip(0.5 + np.cumsum(steps, axis=0) * 0.6, 0.12, 0.88)
    return [Primitive("line", tuple(map(tuple, points)), width=_stroke(rng))]


def _hatched_blob(rng):
    # An irregular blob outline filled with parallel hatching.
    outline = _irregular_polygon(rng, int(rng.integers(7, 12, endpoint=True)), radius_jitter=0.35)
    stroke = _stroke(rng) * 0.6
    closed = outline + outline[:1]
    return [
        Primitive("line", closed, width=stroke),
        Primitive("hatch", outline, width=stroke, spacing=float(rng.uniform(0.1, 0.16)),
                  angle=float(rng.uniform(0.0, math.pi))),
    ]


def _crescent(rng):
    # A filled disc with an offset disc erased from it.
    radius = rng.uniform(*_RADIUS_RANGE)
    offset = radius * rng.uniform(0.35, 0.6)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    dx, dy = offset * math.cos(angle), offset * math.sin(angle)
    disc = ((0.5 - radius, 0.5 - radius), (0.5 + radius, 0.5 + radius))
    bite = ((0.5 - radius + dx, 0.5 - radius + dy), (0.5 + radius + dx, 0.5 + radius + dy))
    return [Primitive("ellipse", disc), Primitive("ellipse", bite, value=0)]


def _spiral(rng):
    turns = rng.uniform(1.5, 2.5)
    radius = rng.uniform(*_RADIUS_RANGE)
    t = np.linspace(0.0, 1.0, 60)
    angles = rng.uniform(0.0, 2.0 * math.pi) + t * turns * 2.0 * math.pi * rng.choice([-1.0, 1.0])
    return [Primitive("line", _circle_points(radius * (0.1 + 0.9 * t), angles), width=_stroke(rng) * 0.8)]


def _zigzag(rng):
    num_teeth = int(rng.integers(3, 6, endpoint=True))
    half_width = rng.uniform(*_RADIUS_RANGE)
    half_height = rng.uniform(0.15, 0.35)
    xs = np.linspace(0.5 - half_width, 0.5 + half_width, 2 * num_teeth + 1)
    ys = 0.5 + half_height * np.where(np.arange(xs.size) % 2 == 0, -1.0, 1.0)
    points = _rotate(tuple(zip(xs, ys)), rng.uniform(0.0, math.pi))
    return [Primitive("line", points, width=_stroke(rng))]


def _lattice(rng):
    # Two to three lines each way, like a hash sign, rotated.
    half = rng.uniform(*_RADIUS_RANGE)
    stroke = _stroke(rng)
    angle = rng.uniform(0.0, math.pi / 2)
    primitives = []
    for position in np.linspace(0.5 - half * 0.6, 0.5 + half * 0.6, int(rng.integers(2, 3, endpoint=True))):
        for line in (((0.5 - half, position), (0.5 + half, position)), ((position, 0.5 - half), (position, 0.5 + half))):
            primitives.append(Primitive("line", _rotate(line, angle), width=stroke))
    return primitives


_SAMPLERS: Dict[str, Callable[[np.random.Generator], List[Primitive]]] = {
    "polygon": _polygon,
    "star": _star,
    "cross": _cross,
    "ring": _ring,
    "arrow": _arrow,
    "scribble": _scribble,
    "hatched_blob": _hatched_blob,
    "crescent": _crescent,
    "spiral": _spiral,
    "zigzag": _zigzag,
    "lattice": _lattice,
}


def sample_shape(kind: str, rng: np.random.Generator) -> List[Primitive]:
    """Draw the parameters of one shape of the given kind.

    Args:
        kind: a name in :data:`TEST_SHAPES` or :data:`VALIDATION_SHAPES`.
        rng: the image's random stream.

    Returns:
        The drawing primitives of the shape, in unit coordinates.
    """
    if kind not in _SAMPLERS:
        raise ValueError(f"unknown shape {kind!r}; expected one of {sorted(_SAMPLERS)}")
    return _SAMPLERS[kind](rng)


def _hatching(primitive: Primitive, size: int) -> Image.Image:
    """Parallel lines clipped to a polygon, as an (size, size) L image."""
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).polygon([(x * size, y * size) for x, y in primitive.points], fill=_OPAQUE)
    lines = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(lines)
    direction = (math.cos(primitive.angle), math.sin(primitive.angle))
    normal = (-direction[1], direction[0])
    width = max(1, round(primitive.width * size))
    # Lines through the centre's neighbourhood, every `spacing`, long enough to cross the square.
    for offset in np.arange(-1.0, 1.0 + 1e-9, primitive.spacing):
        cx, cy = 0.5 + offset * normal[0], 0.5 + offset * normal[1]
        ends = [(cx - direction[0], cy - direction[1]), (cx + direction[0], cy + direction[1])]
        draw.line([(x * size, y * size) for x, y in ends], fill=_OPAQUE, width=width)
    return ImageChops.multiply(lines, mask)


def render_shape(primitives: Sequence[Primitive], side: int) -> np.ndarray:
    """Rasterise a shape into an opacity mask.

    Args:
        primitives: the shape, from :func:`sample_shape`.
        side: side of the square in pixels.

    Returns:
        (side, side) float64 opacity in [0, 1].
    """
    size = side * _SUPERSAMPLING
    image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(image)
    for primitive in primitives:
        points = [(x * size, y * size) for x, y in primitive.points]
        width = max(1, round(primitive.width * size))
        if primitive.kind == "polygon":
            draw.polygon(points, fill=primitive.value)
        elif primitive.kind == "line":
            draw.line(points, fill=primitive.value, width=width, joint="curve")
        elif primitive.kind == "ellipse":
            if primitive.width:
                draw.ellipse(points, outline=primitive.value, width=width)
            else:
                draw.ellipse(points, fill=primitive.value)
        elif primitive.kind == "hatch":
            image = ImageChops.lighter(image, _hatching(primitive, size))
            draw = ImageDraw.Draw(image)
        else:
            raise ValueError(f"unknown primitive {primitive.kind!r}")
    # Area averaging keeps the mask non-negative and free of ringing outside the shape.
    small = image.resize((side, side), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float64) / _OPAQUE
