"""Registration from `http(s)://` URLs: checks, then a streamed download into the model store.

Each hop (the URL, then every redirect) must match `allowed_urls`, and every address its host
resolves to must pass the address rules (serving/routing/addresses.py). The connection goes to
an address that was checked, never to a second DNS answer (DNS rebinding), with the URL's own
host in the Host header and as the TLS server name, so certificates are verified as usual.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import socket
import tempfile
from ipaddress import ip_address
from pathlib import Path
from typing import IO

import httpx

from serving.errors import BadRequest, Conflict, InsufficientStorage, PayloadTooLarge, ServingError
from serving.routing.addresses import IPAddress, IPNetwork, refusal
from serving.settings import Settings

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".mar", ".tar.gz", ".tgz", ".zip")
MAX_REDIRECTS = 5
REDIRECTS = frozenset({301, 302, 303, 307, 308})
CHUNK = 1 << 16
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,254}")
_UNSAFE = re.compile(r"[\x00-\x20\x7f\\]")


class UrlNotAllowed(BadRequest):
    type_name = "InvalidArchiveURLException"


class DownloadFailed(BadRequest):
    """TorchServe answers a failed download with DownloadArchiveException, 400."""

    type_name = "DownloadArchiveException"


class DownloadTooLarge(PayloadTooLarge):
    type_name = "DownloadArchiveException"


class DownloadTimeout(ServingError):
    code = 504
    type_name = "DownloadArchiveException"


def is_remote(url: str) -> bool:
    return "://" in url


def shown(url: str | httpx.URL) -> str:
    """A URL for messages and logs, without its query (pre-signed URLs carry secrets there)."""
    return str(url).split("?", 1)[0].split("#", 1)[0]


def archive_name(url: httpx.URL) -> str:
    """The store file name: the URL path's last segment, as TorchServe names downloads."""
    # The raw (still percent-encoded) path: decoding would turn `..%2F` into a separator.
    name = url.raw_path.decode("ascii").split("?", 1)[0].rsplit("/", 1)[-1]
    if not _NAME.fullmatch(name) or not name.endswith(ARCHIVE_SUFFIXES):
        raise UrlNotAllowed(
            f"url: the last path segment of {shown(url)} must be an archive file name "
            f"(letters, digits, '.', '_', '+', '-'; ending in {', '.join(ARCHIVE_SUFFIXES)}); "
            f"got {name!r}")
    return name


def check_url(url: str, settings: Settings) -> httpx.URL:
    """The URL parsed, if its scheme, form and `allowed_urls` allow a download."""
    if _UNSAFE.search(url):
        raise UrlNotAllowed("url: whitespace, control characters and backslashes are not "
                            f"allowed in a model URL (got {shown(url)!r})")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as e:
        raise UrlNotAllowed(f"url: {shown(url)!r} is not a valid URL ({e})") from None
    if parsed.scheme not in ("http", "https"):
        raise UrlNotAllowed(
            f"url: only http:// and https:// model URLs are downloaded (got {parsed.scheme}://);"
            " put the archive in the model store and register it by file name")
    if parsed.userinfo:
        raise UrlNotAllowed("url: credentials in the URL are not supported (they would be "
                            "shown by the describe API)")
    if not parsed.host:
        raise UrlNotAllowed(f"url: {shown(url)!r} names no host")
    if not any(re.fullmatch(p, url, re.IGNORECASE) for p in settings.allowed_urls):
        raise UrlNotAllowed(f"Given URL {shown(url)} does not match any allowed URL(s)")
    return parsed


async def resolve(url: httpx.URL, networks: tuple[IPNetwork, ...]) -> list[IPAddress]:
    """Every address the URL's host resolves to; one refused address refuses the host."""
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            url.raw_host.decode("ascii"), port, type=socket.SOCK_STREAM)  # IDNA-encoded
    except (socket.gaierror, UnicodeError) as e:
        raise DownloadFailed(f"Failed to download archive from: {shown(url)}: cannot resolve "
                             f"host {url.host!r} ({e})") from None
    found: list[IPAddress] = []
    for info in infos:
        ip = ip_address(str(info[4][0]).split("%", 1)[0])
        if ip not in found:
            found.append(ip)
    for ip in found:
        reason = refusal(ip, networks)
        if reason is not None:
            raise UrlNotAllowed(f"url: host {url.host!r} of {shown(url)} is refused: {reason}")
    if not found:
        raise DownloadFailed(f"Failed to download archive from: {shown(url)}: host "
                             f"{url.host!r} has no address")
    return found


async def download(url: str, settings: Settings) -> Path:
    """Download `url` into the model store under its own file name; returns the new file."""
    store = settings.model_store
    if store is None:
        raise BadRequest("url: the server was started without a model store")
    first = check_url(url, settings)
    name = archive_name(first)
    final = store / name
    if final.exists() or final.is_symlink():
        raise Conflict(f"Model file already exists {name}")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=".download-", suffix=".part", dir=store)
    except OSError as e:
        raise InsufficientStorage(f"cannot write into the model store: {e.strerror}") from None
    tmp = Path(tmp_name)
    log.info("downloading %s into %s", shown(first), final)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                async with asyncio.timeout(settings.model_download_timeout):
                    size = await _fetch(first, settings, out)
            except TimeoutError:
                raise DownloadTimeout(
                    f"Failed to download archive from: {shown(url)}: not finished within "
                    f"model_download_timeout={settings.model_download_timeout:g} s") from None
            await asyncio.to_thread(_commit, out, tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("downloaded %s (%d bytes) as %s", shown(first), size, name)
    return final


async def _fetch(url: httpx.URL, settings: Settings, out: IO[bytes]) -> int:
    connect = settings.model_download_connect_timeout
    timeout = httpx.Timeout(connect=connect, read=None, write=connect, pool=connect)
    # trust_env=False: a proxy from the environment would make the address checks moot.
    async with httpx.AsyncClient(timeout=timeout, trust_env=False, verify=True) as client:
        for _ in range(MAX_REDIRECTS + 1):
            response = await _connect(client, url, settings)
            try:
                if response.status_code in REDIRECTS:
                    url = _next_hop(url, response, settings)
                    continue
                if response.status_code != 200:
                    raise DownloadFailed(f"Failed to download archive from: {shown(url)}: the "
                                         f"server answered {response.status_code}")
                return await _save(response, url, settings.max_model_download_size, out)
            finally:
                await response.aclose()
    raise DownloadFailed(f"Failed to download archive from: {shown(url)}: more than "
                         f"{MAX_REDIRECTS} redirects")


async def _connect(client: httpx.AsyncClient, url: httpx.URL, settings: Settings
                   ) -> httpx.Response:
    """Send the request to each checked address in turn until one accepts the connection."""
    addresses = await resolve(url, settings.allowed_url_networks)
    headers = {"Host": url.netloc.decode("ascii"), "Accept-Encoding": "identity"}
    extensions = {}
    if url.scheme == "https" and not _is_ip(url.host):
        extensions["sni_hostname"] = url.raw_host.decode("ascii")
    error: ServingError = DownloadFailed("")
    for ip in addresses:
        request = client.build_request("GET", url.copy_with(host=str(ip)), headers=headers,
                                       extensions=extensions)
        try:
            return await client.send(request, stream=True)
        except httpx.ConnectTimeout:
            error = DownloadTimeout(
                f"Failed to download archive from: {shown(url)}: connecting to {ip} timed out "
                f"after model_download_connect_timeout="
                f"{settings.model_download_connect_timeout:g} s")
        except httpx.HTTPError as e:
            error = DownloadFailed(f"Failed to download archive from: {shown(url)}: "
                                   f"{ip}: {e or type(e).__name__}")
            if not isinstance(e, httpx.ConnectError):
                break  # connected, then failed: another address would not help
    raise error


def _next_hop(url: httpx.URL, response: httpx.Response, settings: Settings) -> httpx.URL:
    location = response.headers.get("location")
    if not location:
        raise DownloadFailed(f"Failed to download archive from: {shown(url)}: redirect "
                             f"{response.status_code} without a Location")
    try:
        target = url.join(location)
    except (httpx.InvalidURL, ValueError):
        raise DownloadFailed(f"Failed to download archive from: {shown(url)}: redirect to an "
                             f"invalid URL") from None
    if url.scheme == "https" and target.scheme == "http":
        raise UrlNotAllowed(f"url: {shown(url)} redirects from https to http "
                            f"({shown(target)}); refused")
    log.info("download of %s redirected to %s", shown(url), shown(target))
    return check_url(str(target), settings)


async def _save(response: httpx.Response, url: httpx.URL, limit: int, out: IO[bytes]) -> int:
    declared = response.headers.get("content-length", "")
    too_large = (f"Failed to download archive from: {shown(url)}: larger than "
                 f"max_model_download_size={limit} bytes")
    if declared.isdigit() and int(declared) > limit:
        raise DownloadTooLarge(f"{too_large} (Content-Length {declared})")
    size = 0
    try:
        async for chunk in response.aiter_raw(CHUNK):
            size += len(chunk)
            if size > limit:
                raise DownloadTooLarge(too_large)
            await asyncio.to_thread(out.write, chunk)
    except httpx.HTTPError as e:
        raise DownloadFailed(f"Failed to download archive from: {shown(url)}: "
                             f"{e or type(e).__name__}") from None
    except OSError as e:
        raise InsufficientStorage(f"cannot write into the model store: {e.strerror}") from None
    return size


def _commit(out: IO[bytes], tmp: Path, final: Path) -> None:
    """Durable, then visible under its final name at once; an existing name is never replaced."""
    try:
        out.flush()
        os.fsync(out.fileno())
        try:
            os.link(tmp, final)
        except FileExistsError:
            raise Conflict(f"Model file already exists {final.name}") from None
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            if final.exists():  # a file system without hard links
                raise Conflict(f"Model file already exists {final.name}") from None
            os.replace(tmp, final)
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise InsufficientStorage(f"cannot write into the model store: {e.strerror}") from None


def _is_ip(host: str) -> bool:
    try:
        ip_address(host)
    except ValueError:
        return False
    return True
