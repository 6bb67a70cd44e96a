"""Password hashes: argon2id (argon2-cffi), computed on a small thread pool, never on
the event loop.

Parameters: OWASP's argon2id minimum, m = 19 MiB, t = 2 passes, p = 1 lane, a 16-byte
random salt and a 32-byte hash, stored as the PHC string
(``$argon2id$v=19$m=19456,t=2,p=1$salt$hash``) so a later change of parameters
verifies old hashes and rehashes them at the next login. One hash is ~25-40 ms of
CPU on this machine and 19 MiB of memory: with ``HASH_WORKERS`` = 2 threads an API
process holds at most ~38 MiB for hashing, and a burst of logins queues on the pool
instead of stalling the loop (argon2-cffi's C call releases the GIL, so the loop keeps
answering /healthz while the pool hashes; issue 22 measured seconds of stall when
scrypt ran on the loop).

An unknown login is verified against a dummy hash of the same parameters, so a
wrong login name costs the same time as a wrong password (no account enumeration by
timing; sign-up itself says whether a name is taken, as it must).
"""

from __future__ import annotations

import asyncio
import secrets
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

TIME_COST = 2
MEMORY_COST_KIB = 19 * 1024
PARALLELISM = 1
HASH_LEN = 32
SALT_LEN = 16
HASH_WORKERS = 2
MIN_PASSWORD = 10  # characters; NIST SP 800-63B asks at least 8
MAX_PASSWORD = 256  # longer is refused before hashing (no hashing of megabytes)


class Passwords:
    def __init__(self, *, time_cost: int = TIME_COST, memory_cost: int = MEMORY_COST_KIB,
                 parallelism: int = PARALLELISM, workers: int = HASH_WORKERS) -> None:
        self.hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_cost,
                                     parallelism=parallelism, hash_len=HASH_LEN,
                                     salt_len=SALT_LEN)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="password-hash")
        self._dummy = self.hasher.hash(secrets.token_urlsafe(16))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def hash(self, password: str) -> str:
        return await self._run(self.hasher.hash, password)

    def _verify(self, stored: str | None, password: str) -> bool:
        try:
            return self.hasher.verify(stored or self._dummy, password) and stored is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def verify(self, stored: str | None, password: str) -> bool:
        """Whether ``password`` matches ``stored`` (None: an unknown login, checked
        against the dummy hash for the same cost, and always False)."""
        if len(password) > MAX_PASSWORD:
            return False
        return await self._run(self._verify, stored, password)

    def needs_rehash(self, stored: str) -> bool:
        return self.hasher.check_needs_rehash(stored)


def password_problem(password: str) -> str | None:
    """Why ``password`` cannot be a new password, or None."""
    if len(password) < MIN_PASSWORD:
        return f"a password has at least {MIN_PASSWORD} characters"
    if len(password) > MAX_PASSWORD:
        return f"a password has at most {MAX_PASSWORD} characters"
    return None
