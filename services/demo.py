"""`make run` until the pipeline services land: shows the stack is up and replays the
seed's example 3 through the domain core, printing every event and settlement."""

from __future__ import annotations

from deploy.localstack import default_stack
from domain import Accepted, handle, issue_offer
from schemas import commands as c

T0 = 1_700_000_000_000


def main() -> None:
    kafka, redis = default_stack()
    print(f"kafka  {kafka.bootstrap}  {'up' if kafka.running() else 'DOWN'}")
    print(f"redis  {redis.url}  {'up' if redis.running() else 'DOWN'}")
    print("The pipeline services are not built yet; the domain core on seed example 3:\n")
    [issue] = issue_offer(offer_id="espresso", command_id="issue-1", seller_id="seller",
                          name="Espresso machine", price_minor=200_000, currency="USD",
                          copies=1, at_ms=T0)
    cid = issue.certificate_id
    steps = [
        issue,
        c.AttachPool(command_id="attach-1", certificate_id=cid, at_ms=T0, account_id="seller",
                     funding_ref="escrow-1", budget_minor=100_000, attached_minor=10_000,
                     currency="USD", thresholds=c.Thresholds(max_circulations=11)),
        c.PostCertificate(command_id="post-1", certificate_id=cid, at_ms=T0, account_id="seller"),
        c.Circulate(command_id="share-1", certificate_id=cid, at_ms=T0 + 1, account_id="alice"),
        c.Circulate(command_id="share-2", certificate_id=cid, at_ms=T0 + 2, account_id="bob",
                    via="alice"),
        c.Purchase(command_id="buy-1", certificate_id=cid, at_ms=T0 + 3, account_id="carol",
                   payment_ref="pay-1"),
    ]
    state = None
    for command in steps:
        outcome = handle(state, command)
        assert isinstance(outcome, Accepted), outcome
        state = outcome.state
        for item in (*outcome.events, *outcome.settlements):
            amount = getattr(item, "amount_minor", None)
            extra = f"  {amount / 100:,.2f} {item.currency}" if amount is not None else ""
            print(f"  {command.command_id:<9} {type(item).__name__:<22}{extra}")


if __name__ == "__main__":
    main()
