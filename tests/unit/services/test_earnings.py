"""A sharer's earnings (issue #27.2, #24), from the domain core's own events through
the read model's projections (the dates in gains:{account}, the payouts netting
publishes) to the lines, totals and CSV the pages show: a payout netted against an
earlier clawback shows gross, offset and net; a declined gain its reason; totals are
per currency; the CSV holds exactly the page's lines."""

from __future__ import annotations

import csv
import io

from domain import Accepted, handle
from domain.netting import replay
from schemas import commands as c
from schemas.payments import CommissionPayout
from services.api.earnings import (
    Payout,
    gain_line,
    refusal_words,
    share_outcome,
    to_csv,
    totals,
)
from services.readmodel.projection import Keys, project, project_payment
from tests.e2e.certificates import cert_id, paid, sequencer_entropy, setup

T = 1_765_000_000_000
K = Keys("t.")


class Book:
    """The domain core applied to commands, with what the read model would hold of
    them: states, each account's gains:{account} hash, and netting's payouts."""

    def __init__(self) -> None:
        self.states: dict = {}
        self.hashes: dict[str, dict[str, str]] = {}
        self.settlements: list = []

    def run(self, *commands: c.Command) -> None:
        for command in commands:
            cid = command.certificate_id
            entropy = sequencer_entropy(self.states.get(cid), cid)
            out = handle(self.states.get(cid), command, entropy)
            assert isinstance(out, Accepted), (command, out)
            self.states[cid] = out.state
            self.settlements += out.settlements
            w = project(K, out.state, out.events, out.settlements)
            for key, mapping in w.hset.items():
                self.hashes.setdefault(key, {}).update(mapping)

    def payouts(self, account: str) -> dict[str, Payout]:
        """What the read model holds of ``payments`` for the account (netting's output,
        through project_payment), parsed as the page reads it."""
        _, published = replay(self.settlements)
        raw: dict[str, str] = {}
        for s in published:
            w = project_payment(K, s)
            if w is not None:
                raw.update(w.hset.get(K.payouts(account), {}))
        return {sid: Payout.parse(sid, v) for sid, v in raw.items()}

    def line(self, account: str, cid: str, product: str = "Lamp"):
        dates: dict[str, str] = {}
        for f, v in self.hashes.get(K.gains(account), {}).items():
            cert, _, step = f.rpartition("|")
            if cert == cid:
                dates[step] = v
        return gain_line(self.states[cid], account, dates, self.payouts(account), product)

    def payout_of(self, account: str, cid: str) -> CommissionPayout:
        [s] = [s for s in self.settlements if isinstance(s, CommissionPayout)
               and s.payee_id == account and s.certificate_id == cid and s.attempt == 1]
        return s


def share(cid: str, account: str, n: int, at: int = T, via: str | None = None) -> c.Circulate:
    return c.Circulate(command_id=f"{cid}-s{n}", certificate_id=cid, at_ms=at,
                       account_id=account, via=via)


def bought(cid: str, at: int, currency: str = "EUR") -> c.Purchase:
    return c.Purchase(command_id=f"{cid}-buy", certificate_id=cid, at_ms=at,
                      account_id="bea", **paid(cid, 10_000, currency=currency))


def certificate(name: str, hold_s: int = 0, currency: str = "EUR", **pool) -> tuple[str, list]:
    cid = cert_id(name)
    return cid, setup(cid, T, price_minor=10_000, budget_minor=1_000, attached_minor=300,
                      currency=currency, hold_s=hold_s,
                      acquisition=c.AcquisitionPolicy(amount=c.FixedAmount(amount_minor=100)),
                      **pool)


def netted_book() -> tuple[Book, str, str]:
    """ann gains 100 on FIRST, paid; a chargeback of half the price claws 50 back; her
    next payout, on SECOND, is offset by those 50: gross 100, offset 50, net 50."""
    book = Book()
    first, setup_first = certificate("earn-first")
    second, setup_second = certificate("earn-second")
    book.run(*setup_first, *setup_second, share(first, "ann", 1, T + 1_000),
             bought(first, T + 2_000))
    payout = book.payout_of("ann", first)
    book.run(c.ReportPayment(command_id=f"result:{payout.settlement_id}:1",
                             certificate_id=first, at_ms=T + 3_000,
                             settlement_id=payout.settlement_id, attempt=1, result="settled"),
             c.Refund(command_id=f"{first}-cb", certificate_id=first, at_ms=T + 4_000,
                      by="payment_system", amount_minor=5_000, refund_ref="cb-1",
                      chargeback_reason="fraudulent"),
             share(second, "ann", 2, T + 5_000), bought(second, T + 6_000))
    return book, first, second


def test_a_payout_netted_against_an_earlier_clawback_shows_gross_offset_and_net():
    book, first, second = netted_book()
    clawed = book.line("ann", first)
    assert (clawed.status, clawed.payment, clawed.gross_minor, clawed.offset_minor,
            clawed.net_minor, clawed.clawed_back_minor) == ("clawed", "settled", 100, 0, 100, 50)
    assert clawed.paid_ms == T + 3_000 and clawed.acquired_ms == T + 1_000
    assert clawed.state.startswith("paid on 2025-12-06 05:46 UTC, reference ")
    assert clawed.state.endswith("gross 1.00 EUR, offset 0.00 EUR, net 1.00 EUR; "
                                 "0.50 EUR clawed back by a chargeback")
    netted = book.line("ann", second, "Desk")
    assert (netted.status, netted.payment, netted.gross_minor, netted.offset_minor,
            netted.net_minor) == ("paid", "awaiting", 100, 50, 50)
    assert netted.state == ("being paid (sent to the payment system): gross 1.00 EUR, "
                            "offset 0.50 EUR, net 0.50 EUR")
    assert netted.payment_ref == book.payout_of("ann", second).settlement_id
    assert [what for _, what in netted.history] == [
        "acquired 1.00 EUR", "bought",
        "sent to the payment system: gross 1.00 EUR, offset 0.50 EUR, net 0.50 EUR"]
    # before the netting stage's record is read, the page says the gross only, never
    # a net it does not know
    bare = gain_line(book.states[second], "ann", {}, {}, "Desk")
    assert (bare.gross_minor, bare.offset_minor, bare.net_minor) == (100, None, None)
    assert "net of any offset once the payment is sent" in bare.state


def test_a_payout_a_chargeback_cancelled_shows_the_reissue_net_of_it():
    """#24: ann's payout was sent, not made, when a chargeback of half the price came;
    the payment system cancelled it and it went out again, net of the 50: the line
    shows the reissue (its reference, gross 100, offset 50, net 50) and says why."""
    book = Book()
    cid, setup_cert = certificate("earn-cancel")
    book.run(*setup_cert, share(cid, "ann", 1, T + 1_000), bought(cid, T + 2_000),
             c.Refund(command_id=f"{cid}-cb", certificate_id=cid, at_ms=T + 3_000,
                      by="payment_system", amount_minor=5_000, refund_ref="cb-1",
                      chargeback_reason="fraudulent"))
    sent = book.payout_of("ann", cid)
    book.run(c.ReportPayment(command_id=f"result:{sent.settlement_id}:1", certificate_id=cid,
                             at_ms=T + 4_000, settlement_id=sent.settlement_id, attempt=1,
                             result="cancelled"))
    [again] = [s for s in book.settlements if getattr(s, "reissue_of", None)]
    line = book.line("ann", cid)
    assert (line.payment_ref, line.payment, line.gross_minor, line.offset_minor,
            line.net_minor, line.clawed_back_minor) == (again.settlement_id, "awaiting",
                                                        100, 50, 50, 50)
    assert ("a chargeback came before the payment was made: it was cancelled and sent "
            "again, net of the chargeback: gross 1.00 EUR, offset 0.50 EUR, net 0.50 EUR"
            ) in [what for _, what in line.history]
    assert totals([line])["EUR"]["being_paid_minor"] == 100


def test_totals_are_per_currency_and_add_up_the_lines():
    book, first, second = netted_book()
    usd, setup_usd = certificate("earn-usd", hold_s=600, currency="USD")
    book.run(*setup_usd, share(usd, "ann", 3, T + 7_000), bought(usd, T + 8_000, "USD"))
    lines = [book.line("ann", cid) for cid in (first, second, usd)]
    assert totals(lines) == {
        "EUR": {"pending_minor": 0, "held_minor": 0, "being_paid_minor": 100,
                "paid_minor": 100, "offset_minor": 0, "net_paid_minor": 100,
                "failed_minor": 0, "voided_minor": 0, "clawed_back_minor": 50},
        "USD": {"pending_minor": 0, "held_minor": 100, "being_paid_minor": 0,
                "paid_minor": 0, "offset_minor": 0, "net_paid_minor": 0,
                "failed_minor": 0, "voided_minor": 0, "clawed_back_minor": 0}}
    held = lines[2]
    assert held.state == ("held until 2025-12-06 05:56 UTC (a refund in the hold "
                          "reduces it)")


def test_a_declined_gain_says_why_and_counts_as_voided():
    book = Book()
    cid, commands = certificate("earn-declined", hold_s=600)
    book.run(*commands, share(cid, "ann", 1, T + 1_000), bought(cid, T + 2_000),
             c.DeclineCommission(command_id=f"{cid}-decline", certificate_id=cid,
                                 at_ms=T + 3_000, account_id="seller", sharer_id="ann",
                                 reason="self_referral", note="a friend of the buyer"))
    line = book.line("ann", cid)
    assert (line.status, line.kept_minor, line.lost_minor) == ("declined", 0, 100)
    assert line.state == "declined in review: self_referral: a friend of the buyer"
    assert line.declined_reason == "self_referral: a friend of the buyer"
    assert (T + 3_000, line.state) in line.history
    assert totals([line])["EUR"]["voided_minor"] == 100


def test_why_a_share_did_not_count():
    book = Book()
    cid, commands = certificate("earn-why")
    book.run(*commands, share(cid, "ann", 1), share(cid, "funder", 2),
             share(cid, "bob", 3, via="ann"))
    state = book.states[cid]
    gains = book.hashes.get(K.gains("funder"), {})
    assert gains == {f"{cid}|why": "seller_or_funder"}
    outcome = share_outcome(state, "funder", gains[f"{cid}|why"])
    assert (outcome.counted, outcome.why) == (False, "seller_or_funder")
    assert share_outcome(state, "ann", None).counted
    assert book.line("funder", cid) is None  # no gain, no earnings line
    assert refusal_words("via_not_in_chain").startswith("bad link")
    assert refusal_words("something_new") == "something new"


def test_a_share_too_deep_says_how_deep_the_pool_pays():
    book = Book()
    cid = cert_id("earn-deep")
    book.run(*setup(cid, T, price_minor=10_000, budget_minor=1_000, attached_minor=300,
                    acquisition=c.AcquisitionPolicy(amount=c.FixedAmount(amount_minor=100),
                                                    max_depth=1)),
             share(cid, "ann", 1), share(cid, "bob", 2, via="ann"))
    why = book.hashes[K.gains("bob")][f"{cid}|why"]
    outcome = share_outcome(book.states[cid], "bob", why)
    assert (outcome.why, outcome.words) == (
        "too_deep", "too deep: only the first 1 levels of sharing earn on this pool")


def test_on_an_upstream_pool_the_words_speak_of_the_account_a_share_came_via():
    book = Book()
    cid = cert_id("earn-upstream")
    book.run(*setup(cid, T, price_minor=10_000, budget_minor=1_000, attached_minor=300,
                    acquisition=c.AcquisitionPolicy(amount=c.FixedAmount(amount_minor=100),
                                                    beneficiary="upstream", max_depth=1)),
             share(cid, "ann", 1), share(cid, "bob", 2, via="ann"),
             share(cid, "cat", 3, via="bob"))
    why = book.hashes[K.gains("cat")][f"{cid}|why"]
    outcome = share_outcome(book.states[cid], "cat", why)
    assert (outcome.why, outcome.words) == (
        "too_deep", "this pool pays the account you came via, and only the first 1 levels "
                    "of sharing earn on it")


def test_the_csv_holds_the_lines_and_defuses_formulas():
    book, first, second = netted_book()
    lines = [book.line("ann", first, "=HYPERLINK(evil)"), book.line("ann", second, "Desk")]
    rows = list(csv.DictReader(io.StringIO(to_csv(lines))))
    assert [r["certificate_id"] for r in rows] == [first, second]
    assert rows[0]["product"] == "'=HYPERLINK(evil)"
    assert (rows[1]["gross_minor"], rows[1]["offset_minor"], rows[1]["net_minor"]) == (
        "100", "50", "50")
    assert rows[1]["state"] == lines[1].state and rows[1]["payment_ref"] == lines[1].payment_ref
    assert rows[0]["paid_at"] == "2025-12-06 05:46 UTC" and rows[0]["clawed_back_minor"] == "50"


def test_a_payout_record_is_the_same_at_every_attempt_so_writing_it_again_changes_nothing():
    book, _, second = netted_book()
    _, published = replay(book.settlements)
    payout = next(s for s in published if isinstance(s, CommissionPayout)
                  and s.certificate_id == second)
    again = type(payout)(**{**{f: getattr(payout, f) for f in payout.__struct_fields__},
                            "attempt": 2})
    assert project_payment(K, payout).hset == project_payment(K, again).hset
