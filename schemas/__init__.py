"""Wire contracts: one tagged union of frozen msgspec Structs per topic.

* ``commands``            -> :data:`schemas.commands.Command`
* ``certificate-events``  -> :data:`schemas.events.Event`
* ``payments``            -> :data:`schemas.payments.Settlement`
* ``rejections``          -> :class:`schemas.rejections.Rejection`

Every message carries ``v`` (its schema version) and every amount is an integer in
minor units next to an ISO 4217 currency code. Evolution follows msgspec's rules
(docs/schema-evolution): a new field gets a default and goes last, nothing is
reordered, renamed or retyped; a breaking change is a new ``v``. Generated JSON
Schema files and the AsyncAPI document live beside these modules and a test fails
when they are stale (``python -m schemas.generate`` rewrites them).
"""
