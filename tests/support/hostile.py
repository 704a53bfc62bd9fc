"""Hostile archive entries, built in tests to prove they are refused."""

from __future__ import annotations

import tarfile


def tar_member(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def path_max_link_chain(outside: str) -> list[tarfile.TarInfo]:
    """CVE-2025-4517's pattern: members that write `escape/sentinel` at `outside` (relative
    to the extraction folder) through Python 3.11.7's tarfile "data" filter.

    Short links `a`, `a/b`, ... each name a 247-character folder, so the short path
    `a/b/.../p` is about 4,000 characters on disk, past PATH_MAX, and realpath() stops
    resolving it. A link under it going up 16 levels then looks as if it stays inside, while
    on disk it lands on the extraction folder, and `escape` (-> that link/../<outside>) leads
    out.
    """
    long, steps = "d" * 247, "abcdefghijklmnop"
    members, real, short = [], "", ""
    for step in steps:
        members.append(tar_member(real + long, tarfile.DIRTYPE))
        members.append(tar_member(short + step, tarfile.SYMTYPE, long))
        real, short = real + long + "/", short + step + "/"
    members.append(tar_member(short + "l" * 254, tarfile.SYMTYPE, "../" * len(steps)))
    members.append(tar_member("escape", tarfile.SYMTYPE, f"{short}{'l' * 254}/{outside}"))
    sentinel = tarfile.TarInfo("escape/sentinel")
    sentinel.size = 5
    members.append(sentinel)
    return members
