"""A commission program's figures, as the seller's console and the funder's pools page
show them (services/api/console.py): pure functions of the certificates' states, so
the read model keeps no extra counters for them (one zadd per offer: its index).

Definitions (the choices the issue left open):
- a **share** is one circulation (a hop of the chain); **sharers** are the distinct
  accounts that circulated; **purchases** are copies bought (refunded ones included);
  **conversion** is purchases per 100 shares;
- commission **pending** (acquired, copy not bought), **held** (bought, in the hold),
  **paid** (after the hold, gross), **clawed back** (chargebacks after the hold);
- budget **spent** = held + paid - clawed back (owed or paid to sharers); **left** =
  what is on show plus the reserve (still there for shares); **returned** = what went
  back to the funder (withdrawals, purchases, refunds, declines, ends). So
  budget = left + pending + spent + returned, the pool's own invariant;
- **cost per sale** = spent / purchases (integer minor units, rounded down).
Money is summed per currency only: an overall view is one row per currency.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from domain import CertificateState
from schemas import commands as c
from services.api.gains import gain_of
from services.api.money import minor_digits, money


@dataclass
class Figures:
    """One currency's figures over some certificates."""

    currency: str
    copies: int = 0
    posted: int = 0
    funded: int = 0
    shares: int = 0
    sharers: set[str] = field(default_factory=set)
    purchases: int = 0
    budget: int = 0
    pending: int = 0
    held: int = 0
    paid: int = 0
    clawed_back: int = 0
    left: int = 0
    returned: int = 0
    # account -> (shares, commission it keeps or may still get)
    by_sharer: dict[str, list[int]] = field(default_factory=dict)
    share_times: list[int] = field(default_factory=list)
    purchase_times: list[int] = field(default_factory=list)

    @property
    def spent(self) -> int:
        return self.held + self.paid - self.clawed_back

    @property
    def conversion(self) -> str:
        """Purchases per 100 shares, one decimal (integer arithmetic)."""
        if not self.shares:
            return "-"
        tenths = (self.purchases * 1000 + self.shares // 2) // self.shares
        return f"{tenths // 10}.{tenths % 10} %"

    @property
    def cost_per_sale(self) -> int | None:
        return self.spent // self.purchases if self.purchases else None

    def top_sharers(self, n: int = 5) -> list[tuple[str, int, int]]:
        """(account, shares, commission), most commission first, then most shares."""
        ranked = sorted(self.by_sharer.items(), key=lambda kv: (-kv[1][1], -kv[1][0], kv[0]))
        return [(a, s, g) for a, (s, g) in ranked[:n]]


def add(figures: Figures, state: CertificateState) -> None:
    """Count one certificate (of ``figures.currency``) in."""
    f = figures
    f.copies += 1
    f.posted += state.posted_at_ms is not None
    for hop in state.chain:
        f.shares += 1
        f.sharers.add(hop.account_id)
        f.by_sharer.setdefault(hop.account_id, [0, 0])[0] += 1
        f.share_times.append(hop.at_ms)
    if state.purchased_at_ms is not None:
        f.purchases += 1
        f.purchase_times.append(state.purchased_at_ms)
    pool = state.pool
    if pool is None:
        return
    f.funded += pool.funding_confirmed
    f.budget += pool.budget_minor
    f.pending += pool.pending_minor
    f.held += pool.held_minor
    f.paid += pool.paid_minor
    f.clawed_back += pool.clawed_back_minor
    f.left += pool.attached_minor + pool.reserve_minor
    f.returned += pool.released_minor
    for account in pool.acquired:
        amount, how = gain_of(state, account)
        if how not in ("voided", "declined"):
            f.by_sharer.setdefault(account, [0, 0])[1] += amount


def figures_of(states: list[CertificateState]) -> dict[str, Figures]:
    """Figures per currency, currencies in alphabetical order."""
    out: dict[str, Figures] = {}
    for state in states:
        add(out.setdefault(state.currency, Figures(state.currency)), state)
    return dict(sorted(out.items()))


def funding_words(state: CertificateState) -> str:
    pool = state.pool
    if pool is None:
        return "no pool attached"
    if pool.funding_confirmed:
        if state.status == "purchased":
            return "funded: the commission earned is held, the rest went back to the funder"
        if state.status in ("refunded", "cancelled", "closed"):
            return "funded; ended: what was not paid out went back to the funder"
        return "funded: the budget is held in escrow"
    return "not funded yet: waiting for the payment system's escrow confirmation"


# --- what one share earns, in words (the create form's preview) --------------------


def share_earns_words(amount: c.AcquisitionAmount, attached: int, budget: int,
                      currency: str) -> str:
    """What one share earns under the pool, and about how many shares the budget pays
    (the attached amount is topped up from the reserve by what each share takes)."""
    m = lambda x: money(x, currency)  # noqa: E731
    on_show = f"{m(attached)} on show, topped up from a budget of {m(budget)}"
    if isinstance(amount, c.FixedAmount):
        each = min(amount.amount_minor, attached)
        capped = (f" (capped at the {m(attached)} on show)" if amount.amount_minor > attached
                  else "")
        return (f"Each share that counts earns a fixed {m(each)}{capped}; {on_show}: "
                f"about {budget // each} shares earn before the budget runs out.")
    if isinstance(amount, c.PercentOfAttached):
        each = attached * amount.basis_points // 10_000
        pct = f"{amount.basis_points // 100}" + (
            f".{amount.basis_points % 100:02d}".rstrip("0") if amount.basis_points % 100 else "")
        if each == 0:
            return (f"Each share earns {pct} % of what is on show: 0 of {m(attached)}, so "
                    "nothing; raise the percentage or the amount on show.")
        return (f"Each share that counts earns {pct} % of what is on show: {m(each)} of "
                f"{m(attached)}; {on_show}: about {budget // each} shares earn before the "
                "budget runs out.")
    if isinstance(amount, c.RandomAmount):
        low, high = min(amount.min_minor, attached), min(amount.max_minor, attached)
        n = high - low + 1
        return (f"Each share that counts earns a random amount from {m(low)} to {m(high)}, "
                f"every amount equally likely (each of the {n:,} amounts has odds of 1 in "
                f"{n:,}; {m((low + high) // 2)} on average), drawn by the platform: nobody "
                f"can choose it; {on_show}: between {budget // high} and {budget // low} "
                "shares earn before the budget runs out.")
    return (f"The first share that counts takes everything on show, {m(attached)}, then "
            f"the reserve refills it for the next; {on_show}: about {budget // attached} "
            "shares earn before the budget runs out.")


# --- amounts typed by people --------------------------------------------------------


def parse_amount(text: str, currency: str, what: str = "amount") -> int:
    """``"12.34", "EUR"`` -> 1234 (minor units). At most the currency's minor digits,
    at least one minor unit; ValueError in words otherwise."""
    raw = text.strip().replace(",", "")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ValueError(f"{what}: {text!r} is not an amount") from None
    digits = minor_digits(currency)
    minor = value.scaleb(digits)
    if not value.is_finite() or minor != minor.to_integral_value():
        raise ValueError(f"{what}: {currency} has {digits} decimal places")
    if minor < 1 or minor > 10**15:
        raise ValueError(f"{what}: must be more than zero")
    return int(minor)


def acquisition_from_form(form: dict, currency: str) -> c.AcquisitionAmount:
    """The create form's "each share earns" fields as the pool's amount policy."""
    kind = str(form.get("earn", "fixed"))
    if kind == "fixed":
        return c.FixedAmount(amount_minor=parse_amount(str(form.get("earn_amount", "")),
                                                       currency, "each share earns"))
    if kind == "percent":
        try:
            bp = int((Decimal(str(form.get("earn_percent", "")).strip()) * 100)
                     .to_integral_value())
        except InvalidOperation:
            raise ValueError("percentage: not a number") from None
        if not 1 <= bp <= 10_000:
            raise ValueError("percentage: from 0.01 to 100")
        return c.PercentOfAttached(basis_points=bp)
    if kind == "random":
        low = parse_amount(str(form.get("earn_min", "")), currency, "smallest amount")
        high = parse_amount(str(form.get("earn_max", "")), currency, "largest amount")
        if low > high:
            raise ValueError("the smallest amount is above the largest")
        return c.RandomAmount(min_minor=low, max_minor=high)
    if kind == "all":
        return c.AllAttached()
    raise ValueError("each share earns: fixed, percent, random or all")


@dataclass(frozen=True)
class PoolTerms:
    """The create form's pool: the same for every copy of the offer."""

    budget_minor: int
    attached_minor: int
    amount: c.AcquisitionAmount
    max_shares: int | None = None

    def words(self, currency: str) -> str:
        said = share_earns_words(self.amount, self.attached_minor, self.budget_minor,
                                 currency)
        if self.max_shares:
            said += (f" The commission is withdrawn after {self.max_shares} shares that "
                     "count.")
        return said


def pool_from_form(form: dict, currency: str) -> PoolTerms:
    """The pool fields of the create (or attach) form; ValueError in words."""
    budget = parse_amount(str(form.get("budget", "")), currency, "budget per copy")
    attached = parse_amount(str(form.get("attached", "")), currency, "on show per copy")
    if attached > budget:
        raise ValueError("the amount on show is more than the budget")
    raw = str(form.get("max_shares", "")).strip()
    if raw and (not raw.isdigit() or not 1 <= int(raw) <= 10**6):
        raise ValueError("withdraw after: a whole number of shares from 1, or empty")
    return PoolTerms(budget, attached, acquisition_from_form(form, currency),
                     int(raw) if raw else None)


# --- CSV --------------------------------------------------------------------------

CSV_COLUMNS = ("certificate_id", "offer_id", "name", "status", "currency", "price_minor",
               "funding", "shares", "sharers", "purchased", "budget_minor", "pending_minor",
               "held_minor", "paid_minor", "clawed_back_minor", "spent_minor", "left_minor",
               "returned_minor")


def _cell(value: object) -> str:
    """No formula injection in a spreadsheet: text starting = + - @ is quoted."""
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def csv_of(states: list[CertificateState], names: dict[str, str]) -> str:
    """One row per certificate (copy); amounts in minor units of its currency."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for state in states:
        f = Figures(state.currency)
        add(f, state)
        pool = state.pool
        writer.writerow([_cell(x) for x in (
            state.certificate_id, state.offer_id, names.get(state.offer_id, ""), state.status,
            state.currency, state.price_minor,
            "none" if pool is None else "confirmed" if pool.funding_confirmed else "waiting",
            f.shares, len(f.sharers), f.purchases, f.budget, f.pending, f.held, f.paid,
            f.clawed_back, f.spent, f.left, f.returned)])
    return out.getvalue()


# --- the chart over time ------------------------------------------------------------

BUCKETS_S = (60, 3_600, 86_400, 7 * 86_400)


def buckets(times: list[list[int]], now_ms: int,
            most: int = 30) -> tuple[int, int, list[list[int]]]:
    """(bucket size ms, first bucket start ms, per series the count per bucket): the
    smallest bucket (minute, hour, day, week) that fits the span in ``most`` bars."""
    every = [t for series in times for t in series]
    start = min(every + [now_ms])
    end = max(every + [now_ms])
    size = next((b * 1000 for b in BUCKETS_S if (end - start) // (b * 1000) < most),
                BUCKETS_S[-1] * 1000)
    last = end - end % size
    first = max(start - start % size, last - (most - 1) * size)
    count = (last - first) // size + 1
    out = []
    for series in times:
        row = [0] * count
        for t in series:
            i = (t - first) // size
            if 0 <= i < count:
                row[i] += 1
        out.append(row)
    return size, first, out


def date_text(ms: int, x: int, y: int, anchor: str = "start") -> str:
    """An SVG text for a moment: its ``data-datetime`` (the UTC instant) the pages'
    script rewrites into the visitor's time zone, as it does the pages' ``<time>``
    elements (services/api/assets.py); without script it reads in UTC."""
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))
    shown = time.strftime("%Y-%m-%d %H:%M", time.gmtime(ms / 1000))
    return (f"<text x='{x}' y='{y}' font-size='11' fill='#222' text-anchor='{anchor}' "
            f"class='when' data-datetime='{iso}'>{shown} UTC</text>")


def chart_svg(share_times: list[int], purchase_times: list[int], now_ms: int,
              element_id: str = "chart") -> str:
    """Shares and purchases per bucket as bars, server-rendered (the CSP allows no
    inline script or style; presentation attributes are neither)."""
    size, first, (shares, bought) = buckets([share_times, purchase_times], now_ms)
    width, height, pad = 600, 180, 30
    top = max(shares + bought + [1])
    bar = (width - 2 * pad) / max(len(shares), 12)  # a few buckets stay slim bars
    unit = {60_000: "minute", 3_600_000: "hour", 86_400_000: "day"}.get(size, "week")
    parts = [f"<svg id='{element_id}' class='chart' viewBox='0 0 {width} {height}' role='img' "
             f"aria-label='shares and purchases per {unit}' xmlns='http://www.w3.org/2000/svg'>",
             f"<title>Shares (blue) and purchases (orange) per {unit}</title>",
             f"<line x1='{pad}' y1='{height - pad}' x2='{width - pad}' y2='{height - pad}' "
             "stroke='#555'/>"]
    scale = (height - 2 * pad) / top
    for i, (s, b) in enumerate(zip(shares, bought, strict=True)):
        x = pad + i * bar
        for offset, value, colour, what in ((0.1, s, "#1565c0", "shares"),
                                            (0.5, b, "#e65100", "purchases")):
            if value:
                h = value * scale
                parts.append(f"<rect x='{x + bar * offset:.1f}' y='{height - pad - h:.1f}' "
                             f"width='{bar * 0.4:.1f}' height='{h:.1f}' fill='{colour}'>"
                             f"<title>{value} {what}</title></rect>")
    parts.append(date_text(first, pad, height - 8))
    parts.append(date_text(first + size * len(shares), width - pad, height - 8, "end"))
    parts.append(f"<text x='{pad}' y='{pad - 8}' font-size='11' fill='#222'>{top} per "
                 f"{unit} (top); blue: shares, orange: purchases</text></svg>")
    return "".join(parts)
