"""A load generator run as its own process, so the test process can probe /healthz undisturbed.

    python -m tests.reliability.burst URL COUNT CONCURRENCY KIND

Sends COUNT POSTs to URL (a webhook endpoint) over CONCURRENCY kept-alive raw sockets and prints one
JSON line: {"count", "seconds", "statuses"}. KIND picks the abuse: "unsigned", "bad-signature",
"oversize" (25 MB + 1, declared), "oversize-chunked" (25 MB + 1 without a length, so the server must
count), "big-unsigned" (24 MB, under the limit, no signature) and "big-bad-signature" (24 MB with a
well-formed wrong signature: the server must read it all before it can refuse it).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from urllib.parse import urlsplit

PAYLOAD = json.dumps({"ref": "refs/heads/master", "repository": {"full_name": "acme/config"},
                      "after": "0" * 40, "padding": "x" * 1500}).encode()
OVERSIZE = 25 * 1024 * 1024 + 1
BIG = 24 * 1024 * 1024


def request(host: str, path: str, kind: str, index: int) -> bytes:
    body = PAYLOAD
    headers = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json",
               "X-GitHub-Event: push", f"X-GitHub-Delivery: burst-{index}"]
    if kind in ("bad-signature", "big-bad-signature"):
        headers.append("X-Hub-Signature-256: sha256=" + f"{index:064x}"[-64:])
    if kind == "oversize":
        body = b"x" * OVERSIZE
    if kind in ("big-unsigned", "big-bad-signature"):
        body = b"x" * BIG
    if kind == "oversize-chunked":
        headers.append("Transfer-Encoding: chunked")
        chunk = b"x" * (1024 * 1024)
        framed = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(26)) + b"0\r\n\r\n"
        return ("\r\n".join(headers) + "\r\n\r\n").encode() + framed
    headers.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    return status


async def worker(host: str, port: int, path: str, kind: str, jobs: asyncio.Queue[int], statuses: Counter[int]) -> None:
    reader = writer = None
    while True:
        try:
            index = jobs.get_nowait()
        except asyncio.QueueEmpty:
            break
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            writer.write(request(f"{host}:{port}", path, kind, index))
            await writer.drain()
            assert reader is not None
            statuses[await read_response(reader)] += 1
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            statuses[0] += 1  # the server closed the connection (e.g. after a 413): reconnect
            if writer is not None:
                writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def main(url: str, count: int, concurrency: int, kind: str) -> dict[str, object]:
    parts = urlsplit(url)
    jobs: asyncio.Queue[int] = asyncio.Queue()
    for index in range(count):
        jobs.put_nowait(index)
    statuses: Counter[int] = Counter()
    start = time.monotonic()
    await asyncio.gather(*(worker(parts.hostname or "127.0.0.1", parts.port or 80, parts.path, kind, jobs, statuses)
                           for _ in range(concurrency)))
    return {"count": count, "seconds": round(time.monotonic() - start, 3),
            "statuses": {str(k): v for k, v in sorted(statuses.items())}}


if __name__ == "__main__":
    url, count, concurrency, kind = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    print(json.dumps(asyncio.run(main(url, count, concurrency, kind))))
