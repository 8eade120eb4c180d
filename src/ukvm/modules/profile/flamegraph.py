"""modules/profile/flamegraph.py: folded stacks (`outer;inner;leaf COUNT`, the format flamegraph
tools read) and a self-contained SVG flame graph drawn from them: the root at the bottom, each
frame as wide as its share of the samples, its name and count in a tooltip (<title>).
"""
from __future__ import annotations

import zlib
from xml.sax.saxutils import escape

WIDTH = 1200
ROW = 17
MARGIN = 10
FONT_PX = 12
CHAR_PX = 7            # a generous average glyph width of the font used, to cut names to fit


def folded(stacks: dict[tuple[str, ...], int]) -> str:
    """One line per distinct stack, outermost frame first, heaviest first."""
    lines = [f"{';'.join(stack)} {n}" for stack, n in sorted(stacks.items(), key=lambda kv: (-kv[1], kv[0]))]
    return "\n".join(lines) + ("\n" if lines else "")


class _Node:
    __slots__ = ("name", "count", "children")

    def __init__(self, name: str):
        self.name, self.count, self.children = name, 0, {}


def _tree(stacks: dict[tuple[str, ...], int]) -> _Node:
    root = _Node("all")
    for stack, n in stacks.items():
        node = root
        node.count += n
        for name in stack:
            node = node.children.setdefault(name, _Node(name))
            node.count += n
    return root


def _depth(node: _Node) -> int:
    return 1 + max((_depth(c) for c in node.children.values()), default=0)


def _color(name: str) -> str:
    """Warm colours, stable per name (flame graphs' convention); tender frames in blue."""
    h = zlib.crc32(name.encode())
    if name.startswith("[ukvm"):
        return f"rgb({80 + h % 40},{130 + h % 50},{200 + h % 55})"
    return f"rgb({205 + h % 50},{(h >> 8) % 180},{(h >> 16) % 55})"


def svg(stacks: dict[tuple[str, ...], int], title: str) -> str:
    root = _tree(stacks)
    depth = _depth(root)
    height = depth * ROW + 3 * MARGIN + 2 * ROW
    total = max(root.count, 1)
    scale = (WIDTH - 2 * MARGIN) / total
    out = [f'<?xml version="1.0" standalone="no"?>\n'
           f'<svg version="1.1" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" '
           f'xmlns="http://www.w3.org/2000/svg">\n'
           f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#f8f8f0"/>\n'
           f'<text x="{WIDTH // 2}" y="{MARGIN + FONT_PX + 4}" font-family="Verdana,sans-serif" '
           f'font-size="{FONT_PX + 5}" text-anchor="middle">{escape(title)}</text>\n']
    base = height - MARGIN - ROW        # the root's row

    def draw(node: _Node, x: float, level: int) -> None:
        w = node.count * scale
        if w < 0.3:
            return
        y = base - level * ROW
        pct = 100.0 * node.count / total
        label = f"{node.name} ({node.count} samples, {pct:.1f}%)"
        room = int((w - 6) // CHAR_PX)
        text = node.name if len(node.name) <= room else (node.name[:room - 2] + ".." if room > 3 else "")
        out.append(f'<g><title>{escape(label)}</title>'
                   f'<rect x="{x:.2f}" y="{y}" width="{w:.2f}" height="{ROW - 1}" fill="{_color(node.name)}" rx="2"/>'
                   + (f'<text x="{x + 3:.2f}" y="{y + ROW - 5}" font-family="Verdana,sans-serif" '
                      f'font-size="{FONT_PX}">{escape(text)}</text>' if text else "") + '</g>\n')
        cx = x
        for child in sorted(node.children.values(), key=lambda c: c.name):
            draw(child, cx, level + 1)
            cx += child.count * scale

    draw(root, MARGIN, 0)
    out.append("</svg>\n")
    return "".join(out)
