"""The peers of the reference Dragonfly 2 scheduler (:mod:`local.dragonfly2_scheduler`): hosts with a
hostname, a fake IP (a label: every download goes from this process) and a Dragonfly host type, and
per peer, per task, what it holds: ``downloading``, ``finished`` or ``failed``.

A peer asked for a task really downloads its URL with the headers it was given, following redirects
as a Dragonfly peer's Go client does (:func:`local.supernode.open_following_redirects`: Authorization
dropped on a hop to another host), and checks the digest a ``/blobs/sha256:`` (or ``sha512:``) URL
names. The bytes are hashed and dropped: only the state is kept.

Test knobs, per peer: a delay between the bytes being in and the task being ``finished`` (a slow
peer; changing it wakes the waiters, so a test can hold a peer with a long delay and release it with
0), failing (its downloading tasks fail at once, and so does every task it is given until it is
switched back), and eviction of a task behind the scheduler's back.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from time import monotonic, time
from typing import Final, Literal
from urllib.parse import unquote, urlsplit

import requests

from local.supernode import download_session, open_following_redirects

log = logging.getLogger("local.dragonfly2_peers")

# dragonfly pkg/types HostType: 0 normal, 1 super seed (older schedulers also had 2 strong seed and
# 3 weak seed; every non-zero type is a seed peer).
HOST_TYPE_NORMAL = 0
HOST_TYPE_SUPER_SEED = 1
# dfdaemon's default gRPC and download ports: every peer has its own IP, so they can share them.
PEER_PORT = 4000
PEER_DOWNLOAD_PORT = 4001

State = Literal["downloading", "finished", "failed"]
DOWNLOADING: Final = "downloading"
FINISHED: Final = "finished"
FAILED: Final = "failed"

CHUNK_BYTES = 1 << 16
_BLOB_DIGEST = re.compile(r"/blobs/(sha256|sha512):([0-9a-f]+)$")


@dataclass(frozen=True)
class Host:
    hostname: str
    ip: str
    type: int = HOST_TYPE_NORMAL
    port: int = PEER_PORT
    download_port: int = PEER_DOWNLOAD_PORT

    @property
    def is_seed(self) -> bool:
        return self.type != HOST_TYPE_NORMAL

    @property
    def id(self) -> str:
        """dragonfly ``idgen.HostID``: ``<ip>-<hostname>``, with ``-seed`` for a seed peer."""
        return f"{self.ip}-{self.hostname}" + ("-seed" if self.is_seed else "")


def default_hosts(seed_peers: int, normal_peers: int) -> list[Host]:
    """``seed-peer-N`` on 127.0.1.N+1 and ``peer-N`` on 127.0.2.N+1, seed peers first."""
    if seed_peers < 0 or normal_peers < 0 or seed_peers > 250 or normal_peers > 250:
        raise ValueError("seed_peers and normal_peers must be between 0 and 250")
    seeds = [Host(f"seed-peer-{i}", f"127.0.1.{i + 1}", HOST_TYPE_SUPER_SEED) for i in range(seed_peers)]
    normals = [Host(f"peer-{i}", f"127.0.2.{i + 1}") for i in range(normal_peers)]
    return seeds + normals


@dataclass(frozen=True)
class Download:
    """What a peer is asked to hold: ``url`` under ``task_id``, fetched with ``headers``."""

    task_id: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class _Holding:
    url: str
    generation: int
    state: State = DOWNLOADING
    error: str = ""
    downloaded_at: float | None = None  # monotonic; set once the bytes are in and checked
    finished_at: float | None = None  # time.time() when it became finished, for notice measurements


class _DownloadFailed(Exception):
    pass


class Peers:
    """The hosts and what each holds. ``start`` before giving downloads, ``close`` at the end."""

    def __init__(self, hosts: list[Host], *, workers: int = 16, download_timeout: float = 30.0) -> None:
        names = [host.hostname for host in hosts]
        if len(set(names)) != len(names):
            raise ValueError("hostnames must be unique")
        self.hosts = list(hosts)
        self._by_name = {host.hostname: host for host in hosts}
        self._workers = workers
        self._download_timeout = download_timeout
        self._cond = threading.Condition()
        self._tasks: dict[str, dict[str, _Holding]] = {}  # task id -> hostname -> holding
        self._delays: dict[str, float] = {}
        self._default_delay = 0.0
        self._failing: set[str] = set()
        self._generation = 0
        self._stopping = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._session: requests.Session | None = None
        self._finisher: threading.Thread | None = None

    def start(self) -> None:
        if self._pool is not None:
            return
        self._stopping.clear()
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="d2-peer-download")
        self._session = download_session(self._workers)
        self._finisher = threading.Thread(target=self._finish_delayed, name="d2-peer-finisher", daemon=True)
        self._finisher.start()

    def close(self) -> None:
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        if self._pool is not None:
            # Downloads in flight notice ``_stopping`` at their next chunk.
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._finisher is not None:
            self._finisher.join(timeout=5)
            self._finisher = None
        if self._session is not None:
            self._session.close()
            self._session = None

    def host(self, hostname: str) -> Host:
        try:
            return self._by_name[hostname]
        except KeyError:
            raise KeyError(f"no peer named {hostname!r}; peers: {sorted(self._by_name)}") from None

    # -- what tests and the RPCs read ----------------------------------------------------------

    def holders(self, task_id: str) -> dict[str, State]:
        with self._cond:
            return {name: held.state for name, held in self._tasks.get(task_id, {}).items()}

    def errors(self, task_id: str) -> dict[str, str]:
        """Why each peer that failed the task failed."""
        with self._cond:
            return {name: held.error for name, held in self._tasks.get(task_id, {}).items() if held.error}

    def finished_at(self, task_id: str) -> dict[str, float]:
        """When (``time.time()``) each peer that finished the task finished it."""
        with self._cond:
            held = self._tasks.get(task_id, {})
            return {name: h.finished_at for name, h in held.items() if h.finished_at is not None}

    def holding(self, task_id: str) -> list[tuple[Host, bool]]:
        """The peers holding the task (downloading or finished, not failed), with is_finished."""
        with self._cond:
            held = self._tasks.get(task_id, {})
            return [
                (self._by_name[name], holding.state == FINISHED)
                for name, holding in held.items()
                if holding.state != FAILED
            ]

    def wait_finished(self, task_id: str, count: int, timeout: float) -> bool:
        """Whether at least ``count`` peers have finished the task within ``timeout`` seconds."""

        def enough() -> bool:
            held = self._tasks.get(task_id, {})
            return sum(holding.state == FINISHED for holding in held.values()) >= count

        with self._cond:
            return self._cond.wait_for(enough, timeout)

    def wait_holders(self, task_id: str, wanted: Mapping[str, str], timeout: float) -> bool:
        """Whether the task's holders are exactly ``wanted`` (hostname -> state) within ``timeout``."""
        with self._cond:
            return self._cond.wait_for(
                lambda: {name: held.state for name, held in self._tasks.get(task_id, {}).items()} == wanted,
                timeout,
            )

    # -- test knobs ----------------------------------------------------------------------------

    def set_delay(self, hostname: str | None, seconds: float) -> None:
        """The delay of one peer, or (``hostname`` None) of every peer without one of its own."""
        if hostname is not None:
            self.host(hostname)
        with self._cond:
            if hostname is None:
                self._default_delay = max(0.0, seconds)
            else:
                self._delays[hostname] = max(0.0, seconds)
            self._cond.notify_all()

    def set_failing(self, hostname: str, failing: bool) -> None:
        self.host(hostname)
        with self._cond:
            if not failing:
                self._failing.discard(hostname)
                return
            self._failing.add(hostname)
            for holdings in self._tasks.values():
                held = holdings.get(hostname)
                if held is not None and held.state == DOWNLOADING:
                    held.state, held.error = FAILED, f"peer {hostname} failed"
            self._cond.notify_all()

    def evict(self, task_id: str, hostname: str | None = None) -> int:
        """Drop the task from one peer (or all): the peer no longer holds it, as after its GC. A
        download still running for it is abandoned. Answers how many peers dropped it."""
        if hostname is not None:
            self.host(hostname)
        with self._cond:
            holdings = self._tasks.get(task_id, {})
            names = [hostname] if hostname is not None else list(holdings)
            dropped = sum(holdings.pop(name, None) is not None for name in names)
            if not holdings:
                self._tasks.pop(task_id, None)
            self._cond.notify_all()
        return dropped

    # -- downloads -----------------------------------------------------------------------------

    def download(self, host: Host, download: Download) -> bool:
        """Have ``host`` hold the task: a peer already downloading or holding it does nothing (as a
        dfdaemon answers a task it has), a new, failed or evicted one downloads it. Answers whether
        a download started."""
        with self._cond:
            if self._pool is None or self._stopping.is_set():
                raise RuntimeError("the peers are not started")
            held = self._tasks.setdefault(download.task_id, {}).get(host.hostname)
            if held is not None and held.state != FAILED:
                return False
            self._generation += 1
            holding = _Holding(url=download.url, generation=self._generation)
            self._tasks[download.task_id][host.hostname] = holding
            if host.hostname in self._failing:
                holding.state, holding.error = FAILED, f"peer {host.hostname} failed"
                self._cond.notify_all()
                return True
            self._pool.submit(self._run, host.hostname, download, holding.generation)
        return True

    def _current(self, task_id: str, hostname: str, generation: int) -> _Holding | None:
        held = self._tasks.get(task_id, {}).get(hostname)
        if held is None or held.generation != generation or held.state != DOWNLOADING:
            return None  # evicted, restarted or failed meanwhile: this download's result is moot
        return held

    def _run(self, hostname: str, download: Download, generation: int) -> None:
        error = ""
        try:
            self._fetch(download)
        except _DownloadFailed as exc:
            error = str(exc)
        except requests.RequestException as exc:
            # The type only: some requests errors quote header values.
            error = f"download of {_without_query(download.url)} failed: {type(exc).__name__}"
        except Exception as exc:
            error = f"download of {_without_query(download.url)} failed: {type(exc).__name__}"
        with self._cond:
            held = self._current(download.task_id, hostname, generation)
            if held is None:
                return
            if error:
                held.state, held.error = FAILED, error
                log.info("peer %s failed task %s: %s", hostname, download.task_id, error)
            else:
                held.downloaded_at = monotonic()
            # The finisher marks it finished once the peer's delay has passed (at once without one).
            self._cond.notify_all()

    def _fetch(self, download: Download) -> None:
        session = self._session
        if session is None:
            raise _DownloadFailed("the peers are stopping")
        match = _BLOB_DIGEST.search(unquote(urlsplit(download.url).path))
        digest = hashlib.new(match.group(1)) if match else hashlib.sha256()
        size = 0
        with open_following_redirects(
            session, download.url, download.headers, self._download_timeout
        ) as response:
            for chunk in response.iter_content(CHUNK_BYTES):
                if self._stopping.is_set():
                    raise _DownloadFailed("the scheduler stopped during the download")
                digest.update(chunk)
                size += len(chunk)
        if match is not None and digest.hexdigest() != match.group(2):
            raise _DownloadFailed(
                f"digest mismatch: the URL names {match.group(1)}:{match.group(2)} but the {size} bytes "
                f"downloaded hash to {match.group(1)}:{digest.hexdigest()}"
            )

    def _finish_delayed(self) -> None:
        """Marks downloaded tasks finished once their peer's delay has passed; wakes on every change
        (a new download, a delay changed) and at the next due time."""
        with self._cond:
            while not self._stopping.is_set():
                now = monotonic()
                next_due: float | None = None
                changed = False
                for holdings in self._tasks.values():
                    for name, held in holdings.items():
                        if held.state != DOWNLOADING or held.downloaded_at is None:
                            continue
                        due = held.downloaded_at + self._delays.get(name, self._default_delay)
                        if due <= now:
                            held.state, held.finished_at, changed = FINISHED, time(), True
                        elif next_due is None or due < next_due:
                            next_due = due
                if changed:
                    self._cond.notify_all()
                self._cond.wait(None if next_due is None else next_due - now)


def _without_query(url: str) -> str:
    # Query strings of signed URLs carry signatures: messages show only the rest.
    return url.split("?", 1)[0]
