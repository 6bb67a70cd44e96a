"""A real Keycloak for the OIDC tests: from Maven Central, cached like the Kafka jars.

The distribution (``org.keycloak:keycloak-quarkus-dist``, a zip) is copied once by
Maven into the cache folder (``$COMMISSION_CACHE`` or ``~/.cache/commission-engine``),
unpacked, and *built* once for the options the tests use (``kc.sh build``: Quarkus's
augmentation, ~20 s, which ``start --optimized`` then skips on every start). The
realms in ``deploy/keycloak/*-realm.json`` are imported once into a seed database
(Keycloak's embedded H2 file database): schema creation, the master realm and the
import take ~40 s and would be paid on every start otherwise. A start copies the seed
into its own temporary folder, so every test run begins from the same realms and
nothing it does (rotated keys) reaches the cache. The seed is keyed by a hash of the
realm files: editing one re-seeds on the next fetch or start.

Keycloak 26 needs Java 21 or newer; the machine's default is 17, so the newest JDK
found under /usr/lib/jvm (or ``$KEYCLOAK_JAVA_HOME``) runs it. It runs with a small
heap (``-Xmx384m``), local caches only (no cluster ports), on 127.0.0.1, and is
stopped by its pid, like the broker.

    python -m deploy.keycloak fetch     # download, build and seed (make install does it)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from deploy.localstack import _reap, _spawn, pid_alive, read_pid, stop_pidfile, wait_until

KEYCLOAK_VERSION = "26.5.6"
ARTIFACT = f"org.keycloak:keycloak-quarkus-dist:{KEYCLOAK_VERSION}:zip"
REALMS = Path(__file__).resolve().parent / "keycloak"
HEAP = "-Xms64m -Xmx384m"
# C1 only: less compiling on two shared cores while Keycloak starts
JVM_FLAGS = ("-XX:TieredStopAtLevel=1 -XX:MaxMetaspaceSize=256m "
             "--add-opens=java.base/java.lang=ALL-UNNAMED")  # Java 24+: jboss-threads
# options fixed at build time (kc.sh build); a start must not contradict them
BUILD_OPTIONS = ("--db=dev-file", "--cache=local", "--health-enabled=false",
                 "--metrics-enabled=false")
START_TIMEOUT_S = 180.0
MIN_JAVA = 21


def cache_root() -> Path:
    root = os.environ.get("COMMISSION_CACHE") or str(Path.home() / ".cache" / "commission-engine")
    return Path(root) / f"keycloak-{KEYCLOAK_VERSION}"


def _java_major(java: Path) -> int:
    try:
        out = subprocess.run([str(java), "-version"], capture_output=True, text=True,
                             timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired):
        return 0
    found = re.search(r'version "(\d+)', out)
    return int(found.group(1)) if found else 0


def java_home() -> Path:
    """A JDK or JRE of at least MIN_JAVA: $KEYCLOAK_JAVA_HOME, else the newest under
    /usr/lib/jvm, else the one on PATH."""
    given = os.environ.get("KEYCLOAK_JAVA_HOME")
    candidates = [Path(given)] if given else []
    candidates += sorted(Path("/usr/lib/jvm").glob("*/"), reverse=True)
    on_path = shutil.which("java")
    if on_path:
        candidates.append(Path(on_path).resolve().parent.parent)
    best = max(((_java_major(c / "bin" / "java"), c) for c in candidates
                if (c / "bin" / "java").exists()), default=(0, None))
    if best[0] < MIN_JAVA or best[1] is None:
        raise SystemExit(f"Keycloak {KEYCLOAK_VERSION} needs Java {MIN_JAVA}+; none found "
                         "(set KEYCLOAK_JAVA_HOME)")
    return best[1]


def _env(**extra: str) -> dict[str, str]:
    home = java_home()
    return {**os.environ, "JAVA_HOME": str(home),
            "PATH": f"{home / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "JAVA_OPTS_KC_HEAP": HEAP, "JAVA_OPTS_APPEND": JVM_FLAGS, **extra}


def ensure_distribution() -> Path:
    """The unpacked, built distribution (its home folder), fetched once."""
    root = cache_root()
    home, marker = root / "dist", root / "complete"
    if marker.exists():
        return home
    if shutil.which("mvn") is None:
        raise SystemExit("maven (mvn) is required to fetch Keycloak")
    root.mkdir(parents=True, exist_ok=True)
    download = root / "download"
    shutil.rmtree(download, ignore_errors=True)
    subprocess.run(["mvn", "-q", "-B", "dependency:copy", f"-Dartifact={ARTIFACT}",
                    f"-DoutputDirectory={download}"], check=True, cwd=root)
    unpacked = root / "dist.partial"
    shutil.rmtree(unpacked, ignore_errors=True)
    with zipfile.ZipFile(next(download.glob("*.zip"))) as archive:
        archive.extractall(unpacked)
    inner = unpacked / f"keycloak-{KEYCLOAK_VERSION}"
    for script in (inner / "bin").glob("*.sh"):
        script.chmod(0o755)
    subprocess.run([str(inner / "bin" / "kc.sh"), "build", *BUILD_OPTIONS], check=True,
                   env=_env(), stdout=subprocess.DEVNULL)
    shutil.rmtree(home, ignore_errors=True)
    inner.rename(home)
    shutil.rmtree(unpacked, ignore_errors=True)
    shutil.rmtree(download, ignore_errors=True)
    marker.write_text(KEYCLOAK_VERSION + "\n")
    return home


def _realm_files() -> list[Path]:
    return sorted(REALMS.glob("*-realm.json"))


def realm_names() -> list[str]:
    return [json.loads(path.read_text())["realm"] for path in _realm_files()]


def ensure_seed() -> Path:
    """A database folder holding the master realm and the realms of deploy/keycloak,
    imported once; keyed by the realm files' contents."""
    home = ensure_distribution()
    digest = hashlib.sha256()
    for path in _realm_files():
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    seed = cache_root() / f"seed-{digest.hexdigest()[:16]}"
    if (seed / "complete").exists():
        return seed
    partial = seed.with_name(seed.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    imports = partial / "import"
    imports.mkdir()
    for path in _realm_files():
        shutil.copy(path, imports / path.name)
    done = subprocess.run([str(home / "bin" / "kc.sh"), "import", "--optimized",
                           f"--dir={imports}", f"--db-url-path={partial}", "--cache=local"],
                          check=True, env=_env(), capture_output=True, text=True, cwd=partial)
    (partial / "import.log").write_text(done.stdout + done.stderr)
    if "ERROR" in done.stdout + done.stderr:  # it can exit 0 having imported nothing
        raise SystemExit(f"Keycloak's realm import failed; see {partial / 'import.log'}")
    shutil.rmtree(imports)
    for old in cache_root().glob("seed-*"):
        if old != partial:
            shutil.rmtree(old, ignore_errors=True)
    partial.rename(seed)
    (seed / "complete").write_text("")
    return seed


def openid_configuration_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/.well-known/openid-configuration", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@dataclass
class Keycloak:
    """One Keycloak process on 127.0.0.1:``port`` with its own copy of the seed."""

    run_dir: Path
    port: int
    started_in_s: float = field(default=0.0, init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def issuer(self, realm: str = "shop") -> str:
        return f"{self.url}/realms/{realm}"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "keycloak.pid"

    @property
    def log(self) -> Path:
        return self.run_dir / "keycloak.log"

    def start(self) -> None:
        home, seed = ensure_distribution(), ensure_seed()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        db = self.run_dir / "db"
        shutil.rmtree(db, ignore_errors=True)
        shutil.copytree(seed, db)
        began = time.monotonic()
        argv = [str(home / "bin" / "kc.sh"), "start", "--optimized", "--http-enabled=true",
                "--http-host=127.0.0.1", f"--http-port={self.port}",
                f"--hostname={self.url}", f"--db-url-path={db}", "--cache=local"]
        pid = _spawn(argv, self.log, env=_env(), cwd=self.run_dir)
        self.pidfile.write_text(f"{pid}\n")
        wait_until(lambda: pid_alive(pid) and openid_configuration_answers(
            self.issuer("master")), START_TIMEOUT_S, "keycloak", self.log, pid=pid)
        self.started_in_s = time.monotonic() - began
        missing = [r for r in realm_names() if not openid_configuration_answers(self.issuer(r))]
        if missing:  # an import that imported nothing: seed again on the next start
            (seed / "complete").unlink(missing_ok=True)
            self.stop()
            raise RuntimeError(f"realms {missing} are not in Keycloak's seed database")

    def stop(self) -> None:
        """SIGTERM to kc.sh (it forwards it to the JVM and waits); whatever of its
        process group is left after that (the JVM, if kc.sh was killed) is killed."""
        pid = read_pid(self.pidfile)
        if pid is None:
            return
        stop_pidfile(self.pidfile)
        try:
            os.killpg(pid, signal.SIGKILL)  # its own session: start_new_session=True
        except ProcessLookupError:
            pass
        _reap(pid)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["fetch"]:
        print("usage: python -m deploy.keycloak fetch", file=sys.stderr)
        return 2
    print(ensure_seed())
    return 0


if __name__ == "__main__":
    sys.exit(main())
