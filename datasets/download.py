"""Getting a data set's official files into the layout its loader reads (``prepare``).

Each data set module lists its files in one table (``DOWNLOADS``: URL, published checksum, where the
file lands under the data root); this module does the rest for all of them:

- the download, with HTTP Range resume of a partial file and a few retries with backoff (urllib:
  torchvision's helpers neither resume nor retry, huggingface_hub's serve its own hub only);
- verification against the published checksum or, where none is published, against the sha256
  recorded in the data root's manifest at the first download (``.prepare/manifest.json``); a file
  that fails is moved aside and never used;
- unpacking (``datasets/archives.py``) into a scratch folder whose top folder is moved to its
  target by one rename, so a target that exists is complete, and an interrupted unpacking is
  redone by the next run;
- one prepare at a time per data root (``root_lock``: ``.prepare/lock``), so two shells or jobs
  never write the same partial file.

``--from DIR`` takes the files from a folder (downloaded by hand) and ``--mirror URL`` fetches
them from ``URL/<file name>``: both are flat folders of the files under their official names.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from http.client import HTTPException
from pathlib import Path

from tqdm.auto import tqdm

from benchmark.errors import DataError, StorageError
from datasets.archives import unpack

STATE = ".prepare"  # under the data root: downloads/, unpack/, manifest.json and lock
RETRIES = 4  # attempts per file; the waits between them double from BACKOFF_S
BACKOFF_S = 1.0
TIMEOUT_S = 60
CHUNK = 1 << 20
USER_AGENT = "clpeft-bench-prepare (urllib)"
CLIENT_ERRORS_WORTH_RETRYING = {408, 429}


@dataclass(frozen=True)
class Download:
    """One official file of a data set.

    ``target`` is the path under the data root it provides once in place: an archive's single top
    folder (named as ``target``'s last part) is moved there; a plain file (``unpack`` False) is the
    target itself. ``checksum`` is ``"md5:<hex>"`` or ``"sha256:<hex>"`` as published, or None (the
    sha256 of the first download is recorded and checked afterwards). ``size`` in bytes, if known.
    """

    url: str
    target: str
    checksum: str | None = None
    size: int | None = None
    unpack: bool = True

    @property
    def name(self) -> str:
        """The file's official name (the URL's last part), also its name in ``--from`` and mirror folders."""
        return self.url.rsplit("/", 1)[-1]


class DownloadError(DataError):
    """A file could not be fetched (unreachable, offline, not found); the message names the URL and
    the ``--from`` route."""


def mib(size: int) -> str:
    """A byte count for people: MiB below a GiB, else GiB."""
    return f"{size / 2**20:.1f} MiB" if size < 2**30 else f"{size / 2**30:.1f} GiB"


def downloads_dir(root: Path) -> Path:
    """Where downloads (and their ``.part`` files) wait until they are in place."""
    return root / STATE / "downloads"


def digest(path: Path, algorithm: str, progress: bool = False) -> str:
    """The hex digest of a file, with a progress bar for large ones."""
    hasher = hashlib.new(algorithm)
    with path.open("rb") as handle, tqdm(total=path.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024,
                                          desc=f"verify {path.name}", leave=False, disable=not progress) as bar:
        while chunk := handle.read(CHUNK):
            hasher.update(chunk)
            bar.update(len(chunk))
    return hasher.hexdigest()


def file_error(err: OSError, root: Path) -> DataError:
    """The one-line error for an ``OSError`` on a local file: a full disk names the data root,
    anything else the file (``err.filename``, else the data root)."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(f"no space left in {root}; free space there (or choose another --data-root) and rerun "
                            f"the same prepare: what is complete is kept and a partial download resumes")
    where = Path(err.filename) if err.filename else root
    reason = err.strerror or type(err).__name__
    return DataError(f"cannot use {where} ({reason}); choose a --data-root you can write to (and a --from folder "
                     f"you can read)")


def moved_aside(root: Path, item: Download) -> list[Path]:
    """The copies of ``item`` that failed their checksum and were moved aside (never used)."""
    return sorted(downloads_dir(root).glob(f"{item.name}.bad-*"))


@contextmanager
def root_lock(root: Path) -> Iterator[None]:
    """Hold the data root's prepare lock (``<root>/.prepare/lock``, an ``flock``) for the block; a
    second prepare on the same root gets a one-line ``DataError`` naming the holder. Where the file
    system cannot lock, a warning says so and the block runs unlocked."""
    try:
        (root / STATE).mkdir(parents=True, exist_ok=True)
        handle = os.fdopen(os.open(root / STATE / "lock", os.O_RDWR | os.O_CREAT, 0o644), "r+")
    except OSError as err:
        raise file_error(err, root) from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = handle.read().strip() or "another process"
            raise DataError(f"another prepare is using {root} ({holder}); wait for it to finish and rerun (what it "
                            f"completed is kept)") from None
        except OSError as err:  # e.g. ENOLCK: an NFS mount without lock support
            warnings.warn(f"cannot lock {root} ({err.strerror}); make sure no other prepare uses it", stacklevel=3)
        handle.truncate(0)
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)


class Manifest:
    """The sha256 (and size) of every file downloaded into a data root, recorded at its first
    download: ``<data root>/.prepare/manifest.json``, rewritten atomically."""

    def __init__(self, root: Path):
        self.path = root / STATE / "manifest.json"
        self._entries: dict[str, dict] | None = None

    @property
    def entries(self) -> dict[str, dict]:
        """The recorded entries, read on first use; ``DataError`` if the file is not a manifest."""
        if self._entries is None:
            try:
                entries = json.loads(self.path.read_text()) if self.path.is_file() else {}
            except (json.JSONDecodeError, UnicodeDecodeError):
                entries = None
            if not isinstance(entries, dict) or not all(
                    isinstance(e, dict) and isinstance(e.get("sha256"), str) for e in entries.values()):
                raise DataError(f"{self.path} is not a prepare manifest; delete it (the next prepare records the "
                                f"checksums again)")
            self._entries = entries
        return self._entries

    def expected(self, item: Download) -> str | None:
        """The checksum a file must have: the published one, else the recorded one."""
        if item.checksum:
            return item.checksum
        entry = self.entries.get(item.name)
        return f"sha256:{entry['sha256']}" if entry else None

    def record(self, item: Download, path: Path, sha256: str) -> None:
        """Record ``path``'s sha256 as the one ``item`` must have from now on."""
        self.entries[item.name] = {"sha256": sha256, "size": path.stat().st_size, "url": item.url,
                                   "recorded": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.entries, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self.path)


class Fetcher:
    """Brings ``Download`` items into a data root: from ``source_dir`` (``--from``), else from their
    URLs (or ``mirror``/<name>), each verified before it is unpacked or placed."""

    def __init__(self, root: Path, mirror: str | None = None, source_dir: Path | None = None,
                 progress: bool = True, keep_archives: bool = False):
        self.root, self.mirror, self.source_dir = root, mirror, source_dir
        self.progress, self.keep_archives = progress, keep_archives
        self.downloads, self.scratch = downloads_dir(root), root / STATE / "unpack"
        self.manifest = Manifest(root)

    def url(self, item: Download) -> str:
        """Where ``item`` is fetched from: its official URL, or the mirror's file of the same name."""
        return item.url if self.mirror is None else f"{self.mirror.rstrip('/')}/{item.name}"

    def ensure(self, item: Download) -> bool:
        """Put ``item`` in place unless its target exists already; True if it was fetched now."""
        if (self.root / item.target).exists():
            return False
        try:
            self.downloads.mkdir(parents=True, exist_ok=True)
            source = self._fetch(item)
            self._place(item, source)
            if self.source_dir is None and not self.keep_archives:
                source.unlink()
            for bad in moved_aside(self.root, item):  # a good copy is in place: the bad ones are of no use
                bad.unlink()
        except OSError as err:
            raise file_error(err, self.root) from None
        return True

    def _fetch(self, item: Download) -> Path:
        """The verified file: the one in ``--from``, a complete earlier download, or a new download."""
        if self.source_dir is not None:
            path = self.source_dir / item.name
            if not path.is_file():
                raise DataError(f"{item.name} is not in {self.source_dir} (--from); download it from {item.url} "
                                f"into that folder")
            self._verify(item, path, aside=False)
            return path
        path = self.downloads / item.name
        if path.is_file():
            try:
                self._verify(item, path)
                return path
            except DataError:  # moved aside: download it again
                pass
        self._download(item, path)
        self._verify(item, path)
        return path

    def _verify(self, item: Download, path: Path, aside: bool = True) -> None:
        """Check ``path`` against the expected checksum (recording a sha256 where none is known); a
        mismatch moves a downloaded file aside (``aside``) and raises ``DataError``."""
        expected = self.manifest.expected(item)
        if expected is None:
            self.manifest.record(item, path, digest(path, "sha256", self.progress))
            return
        algorithm, value = expected.split(":", 1)
        found = digest(path, algorithm, self.progress)
        if found == value:
            return
        where = "published" if item.checksum else f"recorded in {self.manifest.path} at its first download"
        if not aside:
            raise DataError(f"{path} has {algorithm} {found}, expected {value} ({where}): not the official file or "
                            f"damaged; download it again from {item.url}")
        bad = path.with_name(f"{path.name}.bad-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}")
        path.rename(bad)
        raise DataError(f"{item.name} from {self.url(item)} has {algorithm} {found}, expected {value} ({where}); "
                        f"moved aside to {bad} (never used; deleted once a good copy is in place); rerun to download "
                        f"it again, or pass --from DIR with a good copy")

    def _download(self, item: Download, path: Path) -> None:
        """Download into ``<path>.part`` (resuming what is there) and rename it to ``path``."""
        url, part = self.url(item), path.with_name(f"{path.name}.part")
        reason = ""
        for attempt in range(RETRIES):
            if attempt:
                time.sleep(BACKOFF_S * 2 ** (attempt - 1))
            try:
                if self._download_once(url, part, item.size):
                    part.rename(path)
                    return
                reason = "the connection closed before the end of the file"
            except urllib.error.HTTPError as err:
                if 400 <= err.code < 500 and err.code not in CLIENT_ERRORS_WORTH_RETRYING | {416}:
                    raise DownloadError(f"{url} answered HTTP {err.code} ({err.reason}); download {item.name} by "
                                        f"hand and pass --from DIR, or --mirror URL") from None
                if err.code == 416 and part.exists():  # the partial file is complete, or not a prefix of this one
                    if complete_length(err.headers.get("Content-Range")) == part.stat().st_size:
                        part.rename(path)
                        return
                    part.unlink()
                reason = f"HTTP {err.code} ({err.reason})"
            except (OSError, HTTPException) as err:  # network: URLError, timeouts, resets, TLS, unreachable hosts
                reason = str(getattr(err, "reason", err)) or type(err).__name__
        kept = part.stat().st_size if part.exists() else 0
        attempts = f"{RETRIES} attempt{'s' if RETRIES > 1 else ''}"
        raise DownloadError(f"could not download {url} ({attempts}; {reason}); rerun to resume"
                            f"{f' ({mib(kept)} kept)' if kept else ''}, or download {item.name} by hand and pass "
                            f"--from DIR, or --mirror URL")

    def _download_once(self, url: str, part: Path, size: int | None) -> bool:
        """One request, appending to ``part`` from its current length; True when the file is complete.
        Network errors propagate as ``OSError``; local ones (full disk) as one-line ``DataError``."""
        offset = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": USER_AGENT, **({"Range": f"bytes={offset}-"} if offset else {})}
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S) as response:
            if offset and (response.status != 206 or range_start(response.headers.get("Content-Range")) != offset):
                offset = 0  # the server ignored the range (or sent another one): start over
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None else size
            free = shutil.disk_usage(part.parent).free
            if total is not None and total - offset > free:
                raise StorageError(f"{part.name.removesuffix('.part')} needs {mib(total - offset)} more in "
                                   f"{part.parent}, which has {mib(free)} free; free space (or choose another "
                                   f"--data-root) and rerun")
            try:
                handle = part.open("ab" if offset else "wb")
            except OSError as err:
                raise file_error(err, self.root) from None
            with handle, tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                              desc=part.name.removesuffix(".part"), leave=False, disable=not self.progress) as bar:
                while chunk := response.read(CHUNK):
                    try:
                        handle.write(chunk)
                    except OSError as err:
                        raise file_error(err, self.root) from None
                    bar.update(len(chunk))
        return total is None or part.stat().st_size == total

    def _place(self, item: Download, source: Path) -> None:
        """Unpack ``source`` (or copy it, for a plain file) and move the result to its target by one rename."""
        target = self.root / item.target
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = self.scratch / item.name
        if scratch.exists():  # left by an interrupted run
            shutil.rmtree(scratch)
        scratch.mkdir(parents=True)
        top = scratch / target.name
        if item.unpack:
            unpack(source, scratch, self.progress)
            if not top.is_dir():
                found = sorted(entry.name for entry in scratch.iterdir())[:5]
                raise DataError(f"{source} holds {found}, not the folder {target.name}/; it is not the official "
                                f"{item.name}: delete it and rerun")
        else:
            shutil.copyfile(source, top)
        os.replace(top, target)
        shutil.rmtree(scratch)


def range_start(content_range: str | None) -> int | None:
    """The first byte of a ``Content-Range: bytes START-END/TOTAL`` header."""
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (content_range or "").strip())
    return int(match.group(1)) if match else None


def complete_length(content_range: str | None) -> int | None:
    """The full length a 416 answer states (``Content-Range: bytes */LENGTH``)."""
    match = re.fullmatch(r"bytes \*/(\d+)", (content_range or "").strip())
    return int(match.group(1)) if match else None
