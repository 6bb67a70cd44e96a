"""Merkle trees over records, for signing a batch once (RFC 9162, section 2.1).

The payment system signs what it says with Ed25519, and the engine checks every
record twice (the captures stage, then the sequencer, which trusts no stage): at
`make run`'s 1,000 commands/s those checks were 40 % of the sequencer's time
(docs/benchmarks.md, "fifth pass"). A signer that sends records in batches signs the
root of the batch's tree once; each record carries its leaf's audit path, and a
verifier that has checked a root's signature checks the next record of the batch
with a few SHA-256s (services/common/auth.py, ``Keyring.verify``).

Leaves and nodes are hashed with distinct prefixes (0x00, 0x01), so no node of one
tree is a leaf of another: a path proves one record, exactly as signed, in one batch.
Pure: no I/O.
"""

from __future__ import annotations

from hashlib import sha256

HASH_SIZE = 32
# the largest batch a proof may claim (a path of at most 16 hashes): bounds the work
# a record can ask of a verifier
MAX_LEAVES = 1 << 16


def leaf_hash(data: bytes) -> bytes:
    return sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return sha256(b"\x01" + left + right).digest()


def tree(leaves: list[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """The root over ``leaves`` (leaf hashes) and each leaf's audit path, nearest
    sibling first (RFC 9162's MTH and PATH: the left subtree holds the largest power
    of two below the number of leaves)."""
    if not leaves:
        raise ValueError("a tree needs at least one leaf")
    if len(leaves) > MAX_LEAVES:
        raise ValueError(f"at most {MAX_LEAVES} leaves in one tree")
    return _tree(leaves)


def _tree(leaves: list[bytes]) -> tuple[bytes, list[list[bytes]]]:
    n = len(leaves)
    if n == 1:
        return leaves[0], [[]]
    k = 1 << ((n - 1).bit_length() - 1)
    left, left_paths = _tree(leaves[:k])
    right, right_paths = _tree(leaves[k:])
    for path in left_paths:
        path.append(right)
    for path in right_paths:
        path.append(left)
    return node_hash(left, right), left_paths + right_paths


def root_from_path(leaf: bytes, index: int, size: int, path: list[bytes]) -> bytes | None:
    """The root that ``path`` leads to from ``leaf``, at ``index`` of a tree of
    ``size`` leaves; None if the path cannot belong to such a tree (wrong length,
    index out of range). RFC 9162, 2.1.3.2."""
    if not 0 <= index < size <= MAX_LEAVES:
        return None
    fn, sn, r = index, size - 1, leaf
    for sibling in path:
        if sn == 0 or len(sibling) != HASH_SIZE:
            return None  # a longer path than the tree is deep, or not a hash
        if fn & 1 or fn == sn:
            r = node_hash(sibling, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, sibling)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None
