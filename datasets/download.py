"""Getting a data set's official files into the layout its loader reads (``prepare``).

Each data set module lists its files in one table (``DOWNLOADS``: URL, published checksum, where the
file lands under the data root); this module does the rest for all of them:

- the download, with HTTP Range resume of a partial file and a few retries with backoff (urllib:
  torchvision's helpers neither resume nor retry, huggingface_hub's serve its own hub only);
- verification against the published checksum or, where none is published, against the sha256
  recorded in the data root's manifest at the first download (``.prepare/manifest.json``); a file
  that fails is moved aside and never used;
- unpacking (tarfile with its ``data`` filter, zipfile) into a scratch folder whose top folder is
  moved into place by one rename, so a target that exists is complete, and an interrupted
  unpacking is redone by the next run.

``--from DIR`` takes the files from a folder (downloaded by hand) and ``--mirror URL`` fetches
them from ``URL/<file name>``: both are flat folders of the files under their official names.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from http.client import HTTPException
from pathlib import Path

from tqdm.auto import tqdm

from benchmark.errors import DataError, StorageError

STATE = ".prepare"  # under the data root: downloads/, unpack/ and manifest.json
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


def mirrored(url: str, mirror: str | None) -> str:
    """``url`` or, with a mirror, the file of the same name under the mirror's base URL."""
    return url if mirror is None else f"{mirror.rstrip('/')}/{url.rsplit('/', 1)[-1]}"


def mib(size: int) -> str:
    """A byte count for people: MiB below a GiB, else GiB."""
    return f"{size / 2**20:.1f} MiB" if size < 2**30 else f"{size / 2**30:.1f} GiB"


def digest(path: Path, algorithm: str, progress: bool = False) -> str:
    """The hex digest of a file, with a progress bar for large ones."""
    hasher = hashlib.new(algorithm)
    with path.open("rb") as handle, tqdm(total=path.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024,
                                          desc=f"verify {path.name}", leave=False, disable=not progress) as bar:
        while chunk := handle.read(CHUNK):
            hasher.update(chunk)
            bar.update(len(chunk))
    return hasher.hexdigest()


def writable_error(err: OSError, folder: Path) -> DataError:
    """The one-line error for an ``OSError`` while writing under ``folder``."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(f"no space left in {folder}; free space there (or choose another --data-root) and "
                            f"rerun the same prepare: what is complete is kept and a partial download resumes")
    reason = err.strerror or type(err).__name__
    return DataError(f"cannot write under {folder} ({reason}); choose a --data-root you can write to")


class Manifest:
    """The sha256 (and size) of every file downloaded into a data root, recorded at its first
    download: ``<data root>/.prepare/manifest.json``, rewritten atomically."""

    def __init__(self, root: Path):
        self.path = root / STATE / "manifest.json"
        try:
            self.entries: dict[str, dict] = json.loads(self.path.read_text()) if self.path.is_file() else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise DataError(f"{self.path} is not valid JSON; delete it (the next prepare records the checksums "
                            f"again)") from None

    def expected(self, item: Download) -> str | None:
        """The checksum a file must have: the published one, else the recorded one."""
        if item.checksum:
            return item.checksum
        entry = self.entries.get(item.name)
        return f"sha256:{entry['sha256']}" if entry else None

    def record(self, item: Download, path: Path, sha256: str) -> None:
        self.entries[item.name] = {"sha256": sha256, "size": path.stat().st_size, "url": item.url,
                                   "recorded": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.entries, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self.path)


class Fetcher:
    """Brings ``Download`` items into a data root: from ``source_dir`` (``--from``), else from their
    URLs (or the mirror's), each verified before it is unpacked or placed."""

    def __init__(self, root: Path, mirror: str | None = None, source_dir: Path | None = None,
                 progress: bool = True, keep_archives: bool = False):
        self.root, self.mirror, self.source_dir = root, mirror, source_dir
        self.progress, self.keep_archives = progress, keep_archives
        self.downloads, self.scratch = root / STATE / "downloads", root / STATE / "unpack"
        try:
            self.downloads.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise writable_error(err, root) from None
        self.manifest = Manifest(root)

    def ensure(self, item: Download) -> bool:
        """Put ``item`` in place unless its target exists already; True if it was fetched now."""
        if (self.root / item.target).exists():
            return False
        try:
            source = self._fetch(item)
            self._place(item, source)
        except OSError as err:
            raise writable_error(err, self.root) from None
        if source.parent == self.downloads and not self.keep_archives and source.exists():
            source.unlink()
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
        raise DataError(f"{item.name} from {mirrored(item.url, self.mirror)} has {algorithm} {found}, expected {value} "
                        f"({where}); moved aside to {bad.name} (never used); rerun to download it again, or pass "
                        f"--from DIR with a good copy")

    def _download(self, item: Download, path: Path) -> None:
        """Download into ``<path>.part`` (resuming what is there) and rename it to ``path``."""
        url = mirrored(item.url, self.mirror)
        part = path.with_name(f"{path.name}.part")
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
                if err.code == 416 and part.exists():  # the partial file is not a prefix of this one
                    part.unlink()
                    reason = "HTTP 416 on resume"
                    continue
                if 400 <= err.code < 500 and err.code not in CLIENT_ERRORS_WORTH_RETRYING:
                    raise DownloadError(f"{url} answered HTTP {err.code} ({err.reason}); download {item.name} by "
                                        f"hand and pass --from DIR, or --mirror URL") from None
                reason = f"HTTP {err.code} ({err.reason})"
            except (urllib.error.URLError, HTTPException, TimeoutError, ConnectionError) as err:
                reason = str(getattr(err, "reason", err)) or type(err).__name__
        kept = part.stat().st_size if part.exists() else 0
        raise DownloadError(f"could not download {url} after {RETRIES} attempts ({reason}); rerun to resume"
                            f"{f' ({mib(kept)} kept)' if kept else ''}, or download {item.name} by hand "
                            f"and pass --from DIR, or --mirror URL")

    def _download_once(self, url: str, part: Path, size: int | None) -> bool:
        """One request, appending to ``part`` from its current length; True when the file is complete."""
        offset = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": USER_AGENT, **({"Range": f"bytes={offset}-"} if offset else {})}
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S) as response:
            if offset and response.status != 206:  # the server ignored the range: start over
                offset = 0
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None else size
            if total is not None:
                free = shutil.disk_usage(part.parent).free
                if total - offset > free:
                    raise StorageError(f"{part.name.removesuffix('.part')} needs {mib(total - offset)} more in "
                                       f"{part.parent}, which has {mib(free)} free; free space (or choose another "
                                       f"--data-root) and rerun")
            with part.open("ab" if offset else "wb") as handle, tqdm(
                    total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                    desc=part.name.removesuffix(".part"), leave=False, disable=not self.progress) as bar:
                while chunk := response.read(CHUNK):
                    handle.write(chunk)
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
        if item.unpack:
            unpack(source, scratch, self.progress)
            top = scratch / target.name
            if not top.is_dir():
                found = sorted(entry.name for entry in scratch.iterdir())[:5]
                raise DataError(f"{source} holds {found}, not the folder {target.name}/; it is not the official "
                                f"{item.name}: delete it and rerun")
        else:
            top = scratch / target.name
            shutil.copyfile(source, top)
        os.replace(top, target)
        shutil.rmtree(scratch)


def unpack(archive: Path, into: Path, progress: bool) -> None:
    """Extract a tar (any compression) or zip archive into ``into``; ``DataError`` if it is damaged."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zipped:
                for member in tqdm(zipped.infolist(), desc=f"unpack {archive.name}", unit="file", leave=False,
                                   disable=not progress):
                    zipped.extract(member, into)
            return
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            tar.extractall(into, members=tqdm(members, desc=f"unpack {archive.name}", unit="file", leave=False,
                                              disable=not progress), filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"{archive} is not a readable archive ({err}); delete it and rerun") from None
