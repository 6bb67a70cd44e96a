"""The fraud rules (services/fraud/rules.py), pure: each rule fires on its pattern, not
on honest traffic next to it, once per (certificate, sharer, rule), within its caps."""

from __future__ import annotations

import msgspec
import pytest

from services.fraud import rules
from services.fraud.rules import AccountRow, BornRow, Seen, Thresholds

pytestmark = pytest.mark.unit

DAY_MS = 86_400_000
NOW = 1_800_000_000_000
TH = Thresholds()


class Rows:
    """The rows of one fraud stage, fed through the keys allocation uses."""

    def __init__(self, th: Thresholds = TH) -> None:
        self.rows: dict[bytes, object] = {}
        self.th = th
        self.sent: dict[str, tuple] = {}  # command id + certificate -> flag (the sequencer's dedupe)

    def see(self, seen: Seen) -> list[rules.Flag]:
        out = []
        for key in rules.feed_keys(seen):
            row, _, flags = rules.apply(self.rows.get(key), key, seen, self.th)
            self.rows[key] = row
            for f in flags:
                ident = (f.certificate_id, rules.command_id(f))
                if ident in self.sent:
                    assert self.sent[ident] == f  # a repeat is the very same command
                    continue
                self.sent[ident] = f
                out.append(f)
        return out


def seen(cert, account, at_ms, *, seller="s1", funder="f1", created_ms=None, co=(), seq=1):
    return Seen(certificate_id=cert, account_id=account, seller_id=seller, funder_id=funder,
                at_ms=at_ms, seq=seq, created_ms=created_ms, co=tuple(co))


def test_velocity_flags_an_account_on_many_certificates_a_minute_and_nothing_slower():
    fast, slow = Rows(), Rows()
    flags = []
    for i in range(TH.velocity_per_minute):
        flags += fast.see(seen(f"c{i}", "bot", NOW + i * 1000))
        assert not slow.see(seen(f"c{i}", "human", NOW + i * 61_000))
    assert {(f.certificate_id, f.rule) for f in flags} == {
        (f"c{i}", "velocity") for i in range(TH.velocity_per_minute)}
    # flagged, its next acquisition is flagged too, once
    assert [f.certificate_id for f in fast.see(seen("c99", "bot", NOW + 70_000))] == ["c99"]


def test_a_burst_of_fresh_accounts_only_in_one_sellers_chains_is_flagged():
    r = Rows()
    flags = []
    for i in range(TH.burst_min):
        flags += r.see(seen(f"c{i % 2}", f"sybil{i}", NOW + i, seller="evil",
                            created_ms=NOW - 60_000 + i * 1000))
    assert {f.sharer_id for f in flags} == {f"sybil{i}" for i in range(TH.burst_min)}
    assert {f.rule for f in flags} == {"fresh-burst"}
    # one fewer is not a burst
    r2 = Rows()
    for i in range(TH.burst_min - 1):
        assert not r2.see(seen("c0", f"sybil{i}", NOW + i, seller="evil",
                               created_ms=NOW - 60_000 + i * 1000))


def test_a_burst_split_by_the_hour_is_seen_whole_by_the_other_tiling():
    r = Rows()
    edge = (NOW // rules.HOUR_MS + 1) * rules.HOUR_MS  # an hour boundary
    flags = []
    for i in range(TH.burst_min):
        flags += r.see(seen("c0", f"sybil{i}", edge + DAY_MS, funder="evil-funder",
                            seller=f"s{i}", created_ms=edge - 2_000 + i * 1000))
    assert {f.sharer_id for f in flags} == {f"sybil{i}" for i in range(TH.burst_min)}


@pytest.mark.parametrize("spoil", ["old", "spread", "two_sellers"])
def test_accounts_that_are_not_a_burst_are_not_flagged(spoil):
    r = Rows()
    for i in range(TH.burst_min + 3):
        created = NOW - 60_000 + i * 1000
        at = NOW + i
        seller = "s1"
        if spoil == "old":
            created -= 30 * DAY_MS
        elif spoil == "spread":
            created -= i * 2 * TH.burst_window_s * 1000
        if spoil == "two_sellers":
            assert not r.see(seen("x", f"a{i}", at, seller="s2", funder="f2", created_ms=created))
        assert not r.see(seen("c", f"a{i}", at + 1, seller=seller, created_ms=created)), spoil


def test_a_ring_of_the_same_accounts_on_a_sellers_certificates_is_flagged_on_each():
    r = Rows()
    ring = ["r1", "r2", "r3"]
    flags = []
    for n in range(TH.ring_min):
        cert = f"c{n}"
        for i, acct in enumerate(ring):
            flags += r.see(seen(cert, acct, NOW + n * 100_000 + i, seller="s9", co=ring[:i][::-1]))
    flagged = {(f.certificate_id, f.sharer_id) for f in flags}
    assert flagged == {(f"c{n}", a) for n in range(TH.ring_min) for a in ring}
    assert {f.rule for f in flags} == {"ring"}


def test_an_account_caught_by_two_rules_at_once_is_flagged_once_on_that_certificate():
    """The sequencer refuses a second flag of the same sharer on a certificate
    (already_flagged), so one acquisition that two rules of one row catch sends one
    flag, not one a rule: in `make run` at 1,000 commands/s the second ones were a
    fifth of all commands."""
    r = Rows()
    ring = ["r1", "r2", "r3"]
    flags = []
    for n in range(TH.velocity_per_minute + TH.ring_min):
        for i, acct in enumerate(ring):
            got = r.see(seen(f"c{n}", acct, NOW + n * 1000 + i, seller="s9", co=ring[:i][::-1]))
            mine = [(f.certificate_id, f.sharer_id) for f in got if f.sharer_id == acct]
            assert len(mine) == len(set(mine)), got
            flags += got
    assert {f.rule for f in flags} == {"ring", "velocity"}  # both rules fired


def test_partners_on_fewer_certificates_or_across_sellers_are_no_ring():
    r = Rows()
    for n in range(TH.ring_min):
        r.see(seen(f"c{n}", "a", NOW + n * 100_000, seller=f"s{n}"))
        assert not r.see(seen(f"c{n}", "b", NOW + n * 100_000 + 1, seller=f"s{n}", co=["a"]))
    r2 = Rows()
    for n in range(TH.ring_min - 1):
        assert not r2.see(seen(f"c{n}", "b", NOW + n * 100_000 + 1, co=["a"]))


def test_a_replayed_acquisition_changes_nothing_and_flags_nothing_again():
    r = Rows()
    for i in range(TH.velocity_per_minute):
        r.see(seen(f"c{i}", "bot", NOW + i * 1000, created_ms=NOW - DAY_MS))
    key = b"a:bot"
    before = msgspec.msgpack.encode(r.rows[key])
    row, changed, flags = rules.apply(r.rows[key], key, seen("c3", "bot", NOW + 3000), TH)
    assert (changed, flags) == (False, []) and msgspec.msgpack.encode(row) == before


def test_rows_stay_bounded():
    r = Rows(Thresholds(velocity_per_minute=32, ring_min=30))
    for i in range(2_000):
        r.see(seen(f"c{i}", "busy", NOW + i * 61_000, co=[f"p{i}", f"q{i}"],
                   created_ms=NOW - DAY_MS * 400))
        r.see(seen(f"c{i}", f"n{i}", NOW + i * 61_000, created_ms=NOW - 5_000 + i))
    acct = r.rows[b"a:busy"]
    assert isinstance(acct, AccountRow)
    assert len(acct.certs) == len(acct.at) == len(acct.sellers) == len(acct.co) == rules.RECENT
    born = [row for row in r.rows.values() if isinstance(row, BornRow)]
    assert max(len(b.accounts) for b in born) <= rules.MAX_ACCOUNTS


def test_rows_survive_the_changelog_codec():
    r = Rows()
    r.see(seen("c0", "a", NOW, created_ms=NOW - 5, co=["b"]))
    decode = msgspec.msgpack.Decoder(rules.Row).decode
    for row in r.rows.values():
        assert decode(msgspec.msgpack.encode(row)) == row


def test_flag_ids_are_valid_ids_and_one_per_sharer_and_rule():
    long = "x" * 64
    ids = {rules.command_id(rules.Flag("c", s, rule, "d")) for s in ("a", long, long + "y")
           for rule in rules.RULES}
    assert len(ids) == 9 and max(map(len, ids)) <= 64


def test_thresholds_are_checked():
    with pytest.raises(ValueError):
        Thresholds(velocity_per_minute=rules.RECENT + 1)
    with pytest.raises(ValueError):
        Thresholds(burst_window_s=3_600)


def test_the_stage_signs_its_flags_with_the_fraud_key_the_sequencer_verifies():
    from schemas.commands import FlagCommission
    from services.common.auth import Keyring
    from services.common.metrics import Metrics
    from services.common.settings import Settings
    from services.fraud.stage import FraudStage

    keyring = Keyring.from_env()
    fraud_only = Keyring({k: key for k, key in keyring.keys.items() if key.scope == "fraud"})
    stage = FraudStage(Settings(), fraud_only, Metrics("fraud"))
    flag = rules.Flag("cert-1", "sybil0", "fresh-burst", TH.detail("fresh-burst"))
    out = stage.signed(stage.flag_command(flag, NOW))
    assert out.key == b"cert-1" and out.topic == stage.topics.commands
    signer = keyring.verify(out.value, dict(out.headers))
    assert signer.scope == "fraud"
    command = msgspec.json.decode(out.value, type=FlagCommission)
    assert command.command_id == "fraud:fresh-burst:sybil0"
