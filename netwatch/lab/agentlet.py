"""The process that runs inside a lab pod: `serve` (the pod's servers) or `client` (one step).

Started by the lab with `ip netns exec <netns> python -m netwatch.lab.agentlet ...`, so
it uses the standard library only and starts fast.

`serve` listens on every declared TCP and UDP port of one pod (or the internet host),
answers lab requests (`netwatch.lab.wire`) with the response size they ask for, answers
DNS on the ports it is told to, and appends one JSON line per finished TCP connection,
per UDP datagram and per DNS query to its log — the server-side truth the traffic
driver checks the manifest against. It touches the ready file once every socket is
bound, and exits cleanly on SIGTERM.

`client` runs one traffic step described by a JSON spec and writes JSON lines to
stdout: `{"event": "connected", ...}` as each TCP connection opens (not for churn),
then one `{"event": "result", "connections": [...]}`. It never raises on a network
error: failures are recorded per connection, so a manifest always accounts for every
attempt.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import random
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO, cast

from netwatch.lab import wire

CONNECT_TIMEOUT = 5.0
REPLY_TIMEOUT = 3.0
_CHUNK = 1 << 16


# ===================================================================== serve


class _Log:
    def __init__(self, path: str) -> None:
        self._file: TextIO = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def close(self) -> None:
        self._file.close()


class _Server:
    def __init__(self, *, ip: str, log: _Log, dns_records: dict[str, list[str]]) -> None:
        self.ip = ip
        self.log = log
        self.dns_records = dns_records

    # ---- TCP

    async def tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        local = writer.get_extra_info("sockname")
        started = time.time()
        received = sent = rounds = 0
        conn_id: str | None = None
        error = None
        try:
            while True:
                try:
                    head = await reader.readexactly(wire.HEADER_SIZE)
                except asyncio.IncompleteReadError as exc:
                    received += len(exc.partial)
                    break
                received += len(head)
                header = wire.unpack_header(head)
                if header is None:  # not a lab client (curl, iperf3, ...): just count
                    received += await _drain(reader)
                    break
                conn_id = header.conn_id.hex()
                body = header.request - wire.HEADER_SIZE
                while body:
                    chunk = await reader.read(min(body, _CHUNK))
                    if not chunk:
                        raise ConnectionError("EOF inside a request")
                    body -= len(chunk)
                    received += len(chunk)
                sent += await _send(writer, header.response)
                rounds += 1
        except (ConnectionError, OSError) as exc:
            error = str(exc) or type(exc).__name__
        finally:
            with contextlib.suppress(OSError):
                writer.close()
                await writer.wait_closed()
        self.log.write(
            {
                "proto": "TCP",
                "id": conn_id,
                "peer": list(peer[:2]),
                "local": list(local[:2]),
                "rounds": rounds,
                "received": received,
                "sent": sent,
                "started": started,
                "ended": time.time(),
                "error": error,
            }
        )

    async def dns_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            while True:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                query = await reader.readexactly(length)
                answer = self.dns_answer(query, peer, proto="TCP", local_port=53)
                if answer is None:
                    break
                writer.write(struct.pack("!H", len(answer)) + answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(OSError):
                writer.close()

    # ---- DNS

    def dns_answer(
        self, query: bytes, peer: tuple[str, int], *, proto: str, local_port: int
    ) -> bytes | None:
        question = wire.parse_question(query)
        if question is None:
            return None
        addresses = self.dns_records.get(question.name)
        response = wire.build_response(query, question, addresses)
        self.log.write(
            {
                "proto": proto,
                "dns": True,
                "txid": question.txid,
                "qname": question.name,
                "peer": list(peer[:2]),
                "local": [self.ip, local_port],
                "received": len(query),
                "sent": len(response),
                "rcode": response[3] & 0x0F,
                "answers": addresses or [],
                "at": time.time(),
            }
        )
        return response


async def _drain(reader: asyncio.StreamReader) -> int:
    total = 0
    while chunk := await reader.read(_CHUNK):
        total += len(chunk)
    return total


async def _send(writer: asyncio.StreamWriter, size: int) -> int:
    left = size
    while left:
        n = min(left, len(wire.FILL))
        writer.write(wire.FILL[:n])
        await writer.drain()
        left -= n
    return size


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: _Server, port: int, *, dns: bool) -> None:
        self.server = server
        self.port = port
        self.dns = dns
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Python 3.11's selector transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        assert self.transport is not None
        if self.dns:
            answer = self.server.dns_answer(data, addr, proto="UDP", local_port=self.port)
            if answer is not None:
                self.transport.sendto(answer, addr)
            return
        header = wire.unpack_header(data)
        sent = 0
        if header is not None and header.response:
            self.transport.sendto(wire.filler(header.response), addr)
            sent = header.response
        self.server.log.write(
            {
                "proto": "UDP",
                "id": header.conn_id.hex() if header else None,
                "peer": list(addr[:2]),
                "local": [self.server.ip, self.port],
                "received": len(data),
                "sent": sent,
                "at": time.time(),
            }
        )


async def serve(args: argparse.Namespace) -> None:
    records: dict[str, list[str]] = {}
    if args.dns_records:
        records = json.loads(Path(args.dns_records).read_text(encoding="utf-8"))
    log = _Log(args.log)
    server = _Server(ip=args.ip, log=log, dns_records=records)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    closers: list[Callable[[], None]] = []
    for port in args.tcp:
        handler = server.dns_tcp if port in args.dns else server.tcp
        srv = await asyncio.start_server(handler, "0.0.0.0", port, reuse_address=True, backlog=4096)
        closers.append(srv.close)
    for port in args.udp:
        transport, _ = await loop.create_datagram_endpoint(
            functools.partial(_Udp, server, port, dns=port in args.dns),
            local_addr=("0.0.0.0", port),
        )
        closers.append(transport.close)
    Path(args.ready).write_text(f"{os.getpid()}\n", encoding="utf-8")
    await stop.wait()
    for close in closers:
        close()
    log.close()


# ===================================================================== client


def _conn_id(prefix: bytes, index: int) -> bytes:
    return prefix + index.to_bytes(4, "big")


def _emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def _tcp_connection(
    spec: dict[str, Any], conn_id: bytes, *, announce: bool
) -> dict[str, Any]:
    host, port = spec["target"]
    record: dict[str, Any] = {
        "id": conn_id.hex(),
        "local": None,
        "sent": 0,
        "received": 0,
        "rounds": 0,
        "started": time.time(),
        "error": None,
    }
    writer = None
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port), CONNECT_TIMEOUT
        )
        record["local"] = list(writer.get_extra_info("sockname")[:2])
        if announce:
            _emit({"event": "connected", "id": record["id"], "local": record["local"]})
        for r in range(spec["rounds"]):
            if r and spec["interval"]:
                await asyncio.sleep(spec["interval"])
            request, response = spec["request"], spec["response"]
            writer.write(wire.pack_header(request=request, response=response, conn_id=conn_id))
            left = request - wire.HEADER_SIZE
            while left:
                n = min(left, len(wire.FILL))
                writer.write(wire.FILL[:n])
                await writer.drain()
                left -= n
            await writer.drain()
            record["sent"] += request
            left = response
            while left:
                chunk = await asyncio.wait_for(reader.read(min(left, _CHUNK)), REPLY_TIMEOUT)
                if not chunk:
                    raise ConnectionError("server closed the connection early")
                left -= len(chunk)
                record["received"] += len(chunk)
            record["rounds"] += 1
        if spec["hold"]:
            await asyncio.sleep(spec["hold"])
    except (OSError, TimeoutError, ConnectionError) as exc:
        record["error"] = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    record["ended"] = time.time()
    return record


async def _tcp(spec: dict[str, Any], prefix: bytes) -> list[dict[str, Any]]:
    jobs = [
        _tcp_connection(spec, _conn_id(prefix, i), announce=True)
        for i in range(spec["connections"])
    ]
    return list(await asyncio.gather(*jobs))


async def _churn(spec: dict[str, Any], prefix: bytes) -> list[dict[str, Any]]:
    """`rate` new connections per second for `duration` seconds, each one short round."""
    loop = asyncio.get_running_loop()
    total = max(1, round(spec["rate"] * spec["duration"]))
    start = loop.time()
    tasks = []
    for i in range(total):
        delay = start + i / spec["rate"] - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(
            asyncio.create_task(_tcp_connection(spec, _conn_id(prefix, i), announce=False))
        )
    return list(await asyncio.gather(*tasks))


def _udp(spec: dict[str, Any], prefix: bytes) -> list[dict[str, Any]]:
    host, port = spec["target"]
    results = []
    for i in range(spec["connections"]):
        conn_id = _conn_id(prefix, i)
        record: dict[str, Any] = {
            "id": conn_id.hex(),
            "local": None,
            "sent": 0,
            "received": 0,
            "packets_sent": 0,
            "packets_received": 0,
            "started": time.time(),
            "error": None,
        }
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind(("0.0.0.0", spec.get("client_port") or 0))
                sock.connect((host, port))
                sock.settimeout(REPLY_TIMEOUT)
                record["local"] = list(sock.getsockname()[:2])
                payload = wire.request_bytes(
                    request=spec["request"], response=spec["response"], conn_id=conn_id
                )
                for r in range(spec["rounds"]):
                    if r and spec["interval"]:
                        time.sleep(spec["interval"])
                    sock.send(payload)
                    record["sent"] += len(payload)
                    record["packets_sent"] += 1
                    if spec["response"]:
                        reply = sock.recv(65535)
                        record["received"] += len(reply)
                        record["packets_received"] += 1
            except OSError as exc:
                record["error"] = f"{type(exc).__name__}: {exc}"
        record["ended"] = time.time()
        results.append(record)
    return results


def _dns(spec: dict[str, Any], prefix: bytes) -> list[dict[str, Any]]:
    host, port = spec["target"]
    results = []
    for i in range(spec["rounds"]):
        if i and spec["interval"]:
            time.sleep(spec["interval"])
        txid = random.getrandbits(16)
        query = wire.build_query(txid=txid, name=spec["query"])
        record: dict[str, Any] = {
            "id": _conn_id(prefix, i).hex(),
            "local": None,
            "txid": txid,
            "sent": len(query),
            "received": 0,
            "packets_sent": 1,
            "packets_received": 0,
            "started": time.time(),
            "error": None,
        }
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.connect((host, port))
                sock.settimeout(REPLY_TIMEOUT)
                record["local"] = list(sock.getsockname()[:2])
                sock.send(query)
                reply = sock.recv(65535)
                record["received"] = len(reply)
                record["packets_received"] = 1
                answer = wire.parse_response(reply)
                if answer is None or answer.txid != txid:
                    record["error"] = "malformed DNS response"
                else:
                    record["rcode"] = answer.rcode
                    record["answers"] = list(answer.addresses)
            except OSError as exc:
                record["error"] = f"{type(exc).__name__}: {exc}"
        record["ended"] = time.time()
        results.append(record)
    return results


def _icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _icmp(spec: dict[str, Any], prefix: bytes) -> list[dict[str, Any]]:
    host = spec["target"][0]
    ident = random.getrandbits(16)
    record: dict[str, Any] = {
        "id": _conn_id(prefix, 0).hex(),
        "icmp_id": ident,
        "local": None,
        "sent": 0,
        "received": 0,
        "packets_sent": 0,
        "packets_received": 0,
        "started": time.time(),
        "error": None,
    }
    payload = wire.filler(spec["request"])
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((host, 9))  # no packet is sent: this only picks the source address
            record["local"] = [probe.getsockname()[0], 0]
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
            for seq in range(1, spec["rounds"] + 1):
                if seq > 1 and spec["interval"]:
                    time.sleep(spec["interval"])
                head = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
                checksum = _icmp_checksum(head + payload)
                packet = struct.pack("!BBHHH", 8, 0, checksum, ident, seq) + payload
                sock.sendto(packet, (host, 0))
                record["sent"] += len(payload)
                record["packets_sent"] += 1
                deadline = time.monotonic() + REPLY_TIMEOUT
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(f"no echo reply for sequence {seq}")
                    sock.settimeout(left)
                    data, addr = sock.recvfrom(65535)
                    ihl = (data[0] & 0x0F) * 4
                    icmp = data[ihl:]
                    if addr[0] != host or len(icmp) < 8:
                        continue
                    kind, _code, _sum, rid, rseq = struct.unpack_from("!BBHHH", icmp)
                    if kind == 0 and rid == ident and rseq == seq:
                        record["received"] += len(icmp) - 8
                        record["packets_received"] += 1
                        break
    except OSError as exc:
        record["error"] = f"{type(exc).__name__}: {exc}"
    record["ended"] = time.time()
    return [record]


def client(spec: dict[str, Any]) -> None:
    prefix = bytes.fromhex(spec["id_prefix"])
    kind = spec["kind"]
    started = time.time()
    if kind == "tcp":
        connections = asyncio.run(_tcp(spec, prefix))
    elif kind == "churn":
        connections = asyncio.run(_churn(spec, prefix))
    elif kind == "udp":
        connections = _udp(spec, prefix)
    elif kind == "dns":
        connections = _dns(spec, prefix)
    elif kind == "icmp":
        connections = _icmp(spec, prefix)
    else:
        raise SystemExit(f"unknown step kind {kind!r}")
    _emit(
        {
            "event": "result",
            "started": started,
            "ended": time.time(),
            "connections": connections,
        }
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m netwatch.lab.agentlet")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run a pod's servers")
    s.add_argument("--ip", required=True, help="the address this host serves on (for logs)")
    s.add_argument("--log", required=True)
    s.add_argument("--ready", required=True)
    s.add_argument("--tcp", type=int, action="append", default=[])
    s.add_argument("--udp", type=int, action="append", default=[])
    s.add_argument("--dns", type=int, action="append", default=[], help="ports that speak DNS")
    s.add_argument("--dns-records", help="JSON {name: [address, ...]}")
    c = sub.add_parser("client", help="run one traffic step")
    c.add_argument("--spec", required=True, help="the step as JSON")
    args = parser.parse_args(argv)
    if args.command == "serve":
        asyncio.run(serve(args))
    else:
        client(json.loads(args.spec))


if __name__ == "__main__":
    main()
