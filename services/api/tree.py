"""The share tree of a certificate as a server-rendered SVG (no scripts, no external
assets): how it was shared, and what the viewer gained, and whether that gain is
pending, held, paid or voided.

Only the viewer's own node is named with its amount; every other account is drawn
as an unnamed node, and the tree's title and the summary under it count the others
by status (issue 22: a visitor sees only its own gain; others as counts).

An account is placed where it first joined the chain: under the account it came
via, or under the catalogue. Large trees stay readable: at most ``MAX_NODES``
accounts are drawn, breadth first (the first levels matter most), and each node
whose children were not all drawn says how many more shared below it.
"""

from __future__ import annotations

from html import escape

from domain import CertificateState
from services.api.gains import PHRASES, gain_of
from services.api.money import money

MAX_NODES = 40
ROOT = ""  # the catalogue
NODE_W, NODE_H, GAP_X, GAP_Y = 170, 56, 12, 34
# text in these colours on white: each at least 4.5:1 (WCAG AA; a unit test checks)
COLOURS = {"pending": "#1565c0", "held": "#a14800", "paid": "#2e7d32", "clawed": "#2e7d32",
           "voided": "#6b6b6b", "none": "#616161", "claimable": "#616161",
           "flagged": "#ad1457", "kept_back": "#ad1457", "declined": "#616161"}
TEXT_W = NODE_W - 16  # room for a line of text in a node
CHAR_W = 7  # about the widest average character of 12 px sans-serif


def fitted(x: float, y: float, text: str, attrs: str = "") -> str:
    """A line of text in a node, never cut off: a line longer than the node is
    squeezed to its width (textLength) rather than clipped or truncated."""
    squeeze = (f" textLength='{TEXT_W}' lengthAdjust='spacingAndGlyphs'"
               if len(text) * CHAR_W > TEXT_W else "")
    return f"<text x='{x:.0f}' y='{y:.0f}'{attrs}{squeeze}>{escape(text)}</text>"
# the status as the tree says it, in one word or two
WORDS = {"pending": "pending", "held": "held", "paid": "paid", "clawed": "paid, part clawed",
         "voided": "voided", "flagged": "in review", "kept_back": "in review",
         "declined": "declined"}


def counts_by_status(state: CertificateState) -> dict[str, int]:
    """How many accounts of the chain stand where (pending, held, paid, ...)."""
    counts: dict[str, int] = {}
    for account in dict.fromkeys(hop.account_id for hop in state.chain):
        _, status = gain_of(state, account)
        counts[status] = counts.get(status, 0) + 1
    return counts


def counts_line(state: CertificateState) -> str:
    counts = counts_by_status(state)
    total = sum(counts.values())
    said = ", ".join(f"{n} {WORDS.get(status, PHRASES[status])}"
                     for status, n in sorted(counts.items()))
    return f"{total} account{'s' if total != 1 else ''} shared it: {said}"


def share_tree_svg(state: CertificateState, viewer: str | None = None) -> str:
    children: dict[str, list[str]] = {ROOT: []}
    parent: dict[str, str] = {}
    for hop in state.chain:
        if hop.account_id in parent:
            continue  # placed where it first joined
        up = hop.via if hop.via in parent else ROOT
        parent[hop.account_id] = up
        children.setdefault(up, []).append(hop.account_id)
        children.setdefault(hop.account_id, [])
    # breadth first, up to MAX_NODES accounts
    shown: list[str] = []
    queue = list(children[ROOT])
    while queue and len(shown) < MAX_NODES:
        account = queue.pop(0)
        shown.append(account)
        queue.extend(children[account])
    visible = set(shown)

    # how many accounts hang below each one (children join after their parent, so one
    # pass in reverse join order adds every subtree up; no recursion over 10,000 hops)
    below = dict.fromkeys(children, 0)
    for account in reversed(list(parent)):
        below[parent[account]] += 1 + below[account]

    # x by the order of leaves in a depth-first walk, y by level
    pos: dict[str, tuple[float, int]] = {}
    next_x = [0]

    def place(account: str, level: int) -> float:
        kids = [c for c in children[account] if c in visible]
        if not kids:
            x = float(next_x[0])
            next_x[0] += 1
        else:
            xs = [place(c, level + 1) for c in kids]
            x = (xs[0] + xs[-1]) / 2
        pos[account] = (x, level)
        return x

    place(ROOT, 0)
    width = max(1, next_x[0]) * (NODE_W + GAP_X) + GAP_X
    height = (max(level for _, level in pos.values()) + 1) * (NODE_H + GAP_Y) + GAP_Y
    out = [f"<svg id='share-tree' xmlns='http://www.w3.org/2000/svg' role='img' "
           f"width='{width:.0f}' viewBox='0 0 {width:.0f} {height:.0f}' "
           f"font-family='sans-serif' font-size='12'>",
           f"<title>Share tree: {len(parent)} accounts, {len(state.chain)} shares</title>",
           f"<desc>{escape(counts_line(state))}</desc>"]

    def box(account: str) -> tuple[float, float]:
        x, level = pos[account]
        return GAP_X + x * (NODE_W + GAP_X), GAP_Y / 2 + level * (NODE_H + GAP_Y)

    for account in pos:
        if account == ROOT:
            continue
        (px, py), (cx, cy) = box(parent[account]), box(account)
        out.append(f"<line x1='{px + NODE_W / 2:.0f}' y1='{py + NODE_H:.0f}' "
                   f"x2='{cx + NODE_W / 2:.0f}' y2='{cy:.0f}' stroke='#bbb'/>")
    for account in pos:
        bx, by = box(account)
        name = ""
        if account == ROOT:
            name = label = "catalogue"
            detail, colour = f"{len(parent)} accounts", COLOURS["none"]
        elif account == viewer:
            amount, status = gain_of(state, account)
            name = label = account
            detail = (f"{money(amount, state.currency)} {WORDS[status]}" if status in WORDS
                      else PHRASES[status])
            colour = COLOURS[status]
        else:  # someone else: neither name nor amount
            label, detail, colour = "an account", "", COLOURS["none"]
        hidden = [c for c in children[account] if c not in visible]
        more = len(hidden) + sum(below[c] for c in hidden)
        out.append(f"<g class='node' data-account='{escape(name)}'>"
                   f"<rect x='{bx:.0f}' y='{by:.0f}' width='{NODE_W}' height='{NODE_H}' rx='6' "
                   f"fill='white' stroke='{colour}' stroke-width='2'/>"
                   + fitted(bx + 8, by + 18, label if len(label) <= 32 else label[:31] + "…",
                            " font-weight='bold'")
                   + (fitted(bx + 8, by + 35, detail, f" fill='{colour}'") if detail else "")
                   + (fitted(bx + 8, by + 50, f"+{more} more below", " fill='#616161'")
                      if more else "") + "</g>")
    out.append("</svg>")
    return "".join(out)
