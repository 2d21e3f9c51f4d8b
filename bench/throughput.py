"""Throughput, CPU, memory, idle cost and latency of the real daemon (issue: throughput).

Starts on loopback the Kanidm HTTPS stand-in (in this process) holding N ready messages and a
minimal implicit-TLS SMTP sink (its own process), runs the real daemon as a subprocess until
every message is marked sent, and prints messages/s, daemon CPU seconds per 1,000 messages and
peak RSS for each N, with the CPU the two peers spent, next to the SMTP-only ceiling
(bench/smtp_only.py: a bare aiosmtplib client sending pre-rendered mails over as many
connections to the same sink, no Kanidm); then (a) the sequential path
(mail_max_connections = 1), (b) the raw ceiling (bench/raw_client.py: one aiosmtplib send and
one httpx mark per message, 4 workers, nothing else), (c) the same raw client with one worker,
which is upstream's loop (send, mark, next), and the ratios the targets use; then the idle
figures and the ready-to-relay latency. ``--profile DIR`` writes a cProfile of each daemon run
and prints its top costs per mail.

    .venv/bin/python bench/throughput.py [--sizes 1000,10000,100000] [--idle-seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pstats
import resource
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

from kanidm_mail_sender.sandbox.certs import Certs, make_certs
from kanidm_mail_sender.sandbox.kanidm_server import KanidmStandIn

HERE = Path(__file__).resolve().parent
TOKEN = "bench-token"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def status_mb(pid: int, field: str) -> float:
    """A memory figure of /proc/PID/status in MB: VmRSS now, or VmHWM (the peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


HAPROXY_CONFIG = """global
    nbthread 1
    maxconn 2000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend smtps
    bind 127.0.0.1:{port} ssl crt {pem}
    default_backend sink
backend sink
    server sink 127.0.0.1:{sink_port}
"""


class Bench:
    def __init__(self, work: Path, profile: Path | None = None, sink: str = "auto") -> None:
        self.work = work
        self.profile = profile
        self.certs: Certs = make_certs(work / "certs")
        self.kanidm = KanidmStandIn(TOKEN)
        self.sinks: list[asyncio.subprocess.Process] = []
        self.sink_port = 0
        fast = shutil.which("haproxy") and shutil.which("smtp-sink", path="/usr/sbin:/usr/bin")
        self.sink_kind = "python" if sink == "python" or not fast else "haproxy"

    async def start(self) -> None:
        await self.kanidm.start(self.certs.server_context())
        if self.sink_kind == "haproxy":
            await self.start_haproxy_sink()
        else:
            await self.start_python_sink()

    async def start_haproxy_sink(self) -> None:
        """Postfix's smtp-sink (C, one event loop) behind haproxy for TLS: the cheapest TLS
        SMTP server at hand, so the figures are the sender's, not the sink's."""
        pem = self.work / "server.pem"
        pem.write_bytes(self.certs.key_path.read_bytes() + self.certs.cert_path.read_bytes())
        plain, self.sink_port = free_port(), free_port()
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        sink = shutil.which("smtp-sink", path="/usr/sbin:/usr/bin")
        assert sink is not None
        self.sinks.append(
            await asyncio.create_subprocess_exec(sink, "-a", *user, f"127.0.0.1:{plain}", "1024")
        )
        config = self.work / "haproxy.cfg"
        config.write_text(HAPROXY_CONFIG.format(port=self.sink_port, pem=pem, sink_port=plain))
        self.sinks.append(
            await asyncio.create_subprocess_exec(
                "haproxy",
                "-db",
                "-f",
                str(config),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
        )
        for _ in range(100):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.sink_port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return
        raise RuntimeError("haproxy did not start listening")

    async def start_python_sink(self, delay_ms: float = 0) -> None:
        port_file = self.work / f"sink-{delay_ms:g}.port"
        self.sinks.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                str(HERE / "sink.py"),
                str(self.certs.cert_path),
                str(self.certs.key_path),
                str(port_file),
                str(delay_ms),
                stdout=asyncio.subprocess.DEVNULL,
            )
        )
        while not port_file.exists() or not port_file.read_text():
            await asyncio.sleep(0.05)
        self.sink_port = int(port_file.read_text())

    async def stop(self) -> None:
        for sink in self.sinks:
            sink.send_signal(signal.SIGTERM)
            await sink.wait()
        await self.kanidm.stop()

    def configs(self, name: str, **extra: object) -> tuple[Path, Path]:
        folder = self.work / name
        folder.mkdir()
        client = folder / "client.toml"
        client.write_text(f'uri = "{self.kanidm.url}"\nca_path = "{self.certs.ca_path}"\n')
        mail = folder / "mail-sender.toml"
        lines = [
            f'token = "{TOKEN}"',
            'instance_display_name = "Kanidm Bench"',
            'instance_url = "https://idm.example.com"',
            'mail_from_address = "idm@example.com"',
            'mail_reply_to_address = "r@example.com"',
            f'mail_relay = "smtps://127.0.0.1:{self.sink_port}"',
            f'mail_ca_path = "{self.certs.ca_path}"',
            f'state_dir = "{folder / "state"}"',
        ]
        lines += [f"{k} = {v!r}".replace("'", '"') for k, v in extra.items()]
        mail.write_text("\n".join(lines) + "\n")
        client.chmod(0o400)
        mail.chmod(0o400)
        return client, mail

    def queue(self, n: int) -> None:
        self.kanidm.clear()
        for i in range(n):
            if i % 2:
                self.kanidm.queue_credential_reset(f"user{i}@example.com", f"User {i}")
            else:
                self.kanidm.queue_test_message(f"user{i}@example.com", f"User {i}")

    async def daemon(self, client: Path, mail: Path) -> asyncio.subprocess.Process:
        args = [sys.executable, "-m", "kanidm_mail_sender", "-c", str(client), "-m", str(mail)]
        if self.profile is not None:  # cProfile output, one file per run, for pstats
            out = self.profile / f"{client.parent.name}.pstats"
            args[1:3] = ["-m", "cProfile", "-o", str(out), "-m", "kanidm_mail_sender"]
        if os.geteuid() == 0:
            args.append("--skip-root-check")
        return await asyncio.create_subprocess_exec(
            *args, stderr=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL
        )

    async def run_daemon(self, name: str, n: int, **extra: object) -> dict[str, float]:
        self.queue(n)
        client, mail = self.configs(name, schedule="* * * * * *", **extra)
        calls = self.kanidm.list_calls
        proc = await self.daemon(client, mail)
        result = await self.measure(proc, n, calls)
        result["peak_mb"] = status_mb(proc.pid, "VmHWM")
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
        assert max(self.kanidm.mark_calls.values()) == 1
        return result

    async def measure(
        self, proc: asyncio.subprocess.Process, n: int, calls: int
    ) -> dict[str, float]:
        """From ``proc``'s first list call until every message is marked: messages per second,
        and CPU seconds per 1,000 messages of ``proc`` and of both peers."""
        while self.kanidm.list_calls == calls:  # start-up is not measured
            await asyncio.sleep(0.005)
        started, cpu0, peers0 = time.perf_counter(), cpu_seconds(proc.pid), self.peers_cpu()
        cpu = cpu0
        while self.kanidm.unsent_count() > 0:
            if proc.returncode is not None:
                raise RuntimeError(f"the client exited ({proc.returncode}) before the end")
            with contextlib.suppress(OSError):  # the raw client exits after its last mark
                cpu = cpu_seconds(proc.pid)
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - started
        with contextlib.suppress(OSError):
            cpu = cpu_seconds(proc.pid)
        kanidm_cpu, sink_cpu = (b - a for a, b in zip(peers0, self.peers_cpu(), strict=True))
        per_1k = 1000 / n
        return {
            "rate": n / elapsed,
            "seconds": elapsed,
            "cpu_per_1k": (cpu - cpu0) * per_1k,
            "kanidm_per_1k": kanidm_cpu * per_1k,
            "sink_per_1k": sink_cpu * per_1k,
        }

    def peers_cpu(self) -> tuple[float, float]:
        """CPU seconds so far of the Kanidm stand-in (this process) and of the sink."""
        return own_cpu_seconds(), sum(cpu_seconds(sink.pid) for sink in self.sinks)

    async def run_raw(self, n: int, concurrency: int) -> dict[str, float]:
        self.queue(n)
        calls = self.kanidm.list_calls
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(HERE / "raw_client.py"),
            self.kanidm.url,
            TOKEN,
            str(self.certs.ca_path),
            str(self.sink_port),
            str(concurrency),
        )
        result = await self.measure(proc, n, calls)
        await proc.wait()
        return result

    async def run_smtp_only(
        self, n: int, concurrency: int, client: str = "aiosmtplib"
    ) -> dict[str, float]:
        """The SMTP-only ceiling for ``n`` mails over ``concurrency`` connections."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.smtp_only",
            client,
            str(self.certs.ca_path),
            str(self.sink_port),
            str(n),
            str(concurrency),
            stdout=asyncio.subprocess.PIPE,
            cwd=HERE.parent,
        )
        out, _ = await proc.communicate()
        result: dict[str, float] = json.loads(out)
        return result

    async def idle(self, seconds: float) -> dict[str, float]:
        self.queue(0)
        client, mail = self.configs("idle")
        proc = await self.daemon(client, mail)
        await asyncio.sleep(3)  # start-up is not idling
        cpu0 = cpu_seconds(proc.pid)
        await asyncio.sleep(seconds)
        cpu = cpu_seconds(proc.pid) - cpu0
        rss = status_mb(proc.pid, "VmRSS")
        calls = self.kanidm.list_calls
        # Latency: a message becomes ready; measure until the relay accepted it (bounded
        # above by the mark-sent, which only follows acceptance) minus the schedule's wait.
        samples = []
        for _ in range(5):
            await asyncio.sleep(1.3)
            ready_at = time.time()
            message = self.kanidm.queue_test_message("late@example.com")
            calls = self.kanidm.list_calls
            while self.kanidm.list_calls == calls:
                await asyncio.sleep(0.001)
            polled_at = time.time()
            while self.kanidm.messages[message].sent_at is None:
                await asyncio.sleep(0.001)
            marked = self.kanidm.messages[message].sent_at
            assert marked is not None
            samples.append((marked.timestamp() - polled_at, polled_at - ready_at))
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
        samples.sort()
        return {
            "cpu_percent": cpu / seconds * 100,
            "rss_mb": rss,
            "latency_ms": samples[len(samples) // 2][0] * 1000,
            "latency_max_ms": max(s[0] for s in samples) * 1000,
            "wait_ms": samples[len(samples) // 2][1] * 1000,
        }


def row(name: str, n: int, r: dict[str, float]) -> None:
    peak = f"{r['peak_mb']:.1f}" if "peak_mb" in r else ""
    peers = f"{r['kanidm_per_1k']:>9.2f} {r['sink_per_1k']:>7.2f}" if "sink_per_1k" in r else ""
    print(
        f"{name:<40} {n:>7} {r['rate']:>7.0f} {r['cpu_per_1k']:>9.2f} {peak:>9} {peers}",
        flush=True,
    )


def top_costs(path: Path, n: int, count: int = 15) -> None:
    """The functions with the most own time in a daemon run's cProfile, in µs per mail.

    cProfile slows the daemon about twofold and counts each resumption of a coroutine as a
    call; read the figures as shares, not as absolute costs.
    """
    stats = pstats.Stats(str(path))
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in entries.values())
    print(
        f"\ntop costs per mail in {path.name} (cProfile, own time; all: {total / n * 1e6:.0f} µs)"
    )
    ranked = sorted(entries.items(), key=lambda item: item[1][2], reverse=True)[:count]
    for (filename, line, function), entry in ranked:
        where = filename.rsplit("site-packages/", 1)[-1].rsplit("src/", 1)[-1]
        share = entry[2] / total * 100
        print(f"  {entry[2] / n * 1e6:7.1f} µs  {share:4.1f} %  {function} ({where}:{line})")


async def network(bench: Bench, delay_ms: float, n: int) -> None:
    """The same comparison against a relay that answers each command after ``delay_ms``."""
    loopback_port = bench.sink_port
    await bench.start_python_sink(delay_ms)
    print(f"\nrelay {delay_ms:g} ms away (bench/sink.py holds back each reply {delay_ms:g} ms):")
    pooled = await bench.run_daemon(f"net-pooled-{delay_ms:g}", n)
    row("daemon (default: 4 connections)", n, pooled)
    single = await bench.run_daemon(f"net-single-{delay_ms:g}", n, mail_max_connections=1)
    row("(a) daemon, mail_max_connections = 1", n, single)
    print(f"daemon / (a) sequential path = {pooled['rate'] / single['rate']:.2f}x")
    bench.sink_port = loopback_port


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--compare-size", type=int, default=10000)
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument("--profile", type=Path, help="write each daemon run's cProfile here")
    parser.add_argument(
        "--sink",
        choices=["auto", "haproxy", "python"],
        default="auto",
        help="auto: haproxy + smtp-sink when installed, else bench/sink.py",
    )
    parser.add_argument(
        "--network-delay-ms",
        type=float,
        default=1.0,
        help="also compare 4 connections and 1 against bench/sink.py holding "
        "back each reply this long, as a relay across a network (0: skip)",
    )
    parser.add_argument("--network-size", type=int, default=3000)
    parser.add_argument(
        "--only-daemon", action="store_true", help="skip the comparison runs and the idle figures"
    )
    parser.add_argument(
        "--only-network", action="store_true", help="only the relay-across-a-network comparison"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kms-bench-") as tmp:
        bench = Bench(Path(tmp), args.profile, args.sink)
        await bench.start()
        try:
            print(
                f"sink: {bench.sink_kind}"
                + (
                    " (smtp-sink behind haproxy, implicit TLS)"
                    if bench.sink_kind == "haproxy"
                    else " (bench/sink.py, implicit TLS)"
                )
            )
            print(
                "CPU s/1k: CPU seconds per 1,000 messages of the client under test; Kanidm and "
                "sink: of the two peers\n"
            )
            print(
                f"{'run':<40} {'msgs':>7} {'msg/s':>7} {'CPU s/1k':>9} {'peak MB':>9} "
                f"{'Kanidm':>9} {'sink':>7}"
            )
            if args.only_network:
                await network(bench, args.network_delay_ms or 1.0, args.network_size)
                return
            results, ceilings = {}, {}
            for i, n in enumerate(int(x) for x in args.sizes.split(",")):
                results[n] = await bench.run_daemon(f"daemon-{i}-{n}", n)
                row("daemon (default: 4 connections)", n, results[n])
                if args.profile is not None:  # a profiled run is no figure to compare
                    top_costs(args.profile / f"daemon-{i}-{n}.pstats", n)
                else:
                    ceilings[n] = await bench.run_smtp_only(n, 4)
                    row("(d) SMTP-only ceiling, 4 connections", n, ceilings[n])
                    ours = await bench.run_smtp_only(n, 4, "ours")
                    row("(e) our SMTP path alone, 4 connections", n, ours)
            if args.only_daemon:
                return
            n = args.compare_size
            if n not in results:
                results[n] = await bench.run_daemon("daemon-compare", n)
                row("daemon (default: 4 connections)", n, results[n])
            seq = await bench.run_daemon("sequential", n, mail_max_connections=1)
            row("(a) daemon, mail_max_connections = 1", n, seq)
            raw = await bench.run_raw(n, 4)
            row("(b) raw ceiling, 4 workers", n, raw)
            upstream = await bench.run_raw(n, 1)
            row("(c) raw, 1 worker: send, mark, next", n, upstream)
            rate = results[n]["rate"]
            print(
                f"\ndaemon / (a) sequential path = {rate / seq['rate']:.2f}x   "
                f"daemon / (b) raw ceiling = {rate / raw['rate'] * 100:.0f} %"
            )
            print("targets: daemon / (c) upstream's loop >= 3x; daemon / (d) SMTP-only >= 70 %")
            for size, result in results.items():
                ceiling = ceilings.get(size)
                share = f"{result['rate'] / ceiling['rate'] * 100:.0f} %" if ceiling else "-"
                print(
                    f"  {size:>7} msgs: daemon / (c) = {result['rate'] / upstream['rate']:.2f}x"
                    f"   daemon / (d) = {share}   CPU {result['cpu_per_1k']:.2f} ms per mail"
                )
            if args.network_delay_ms:
                await network(bench, args.network_delay_ms, args.network_size)
            idle = await bench.idle(args.idle_seconds)
            print(
                f"\nidle, empty queue, default schedule, {args.idle_seconds:.0f} s: "
                f"CPU {idle['cpu_percent']:.2f} %  RSS {idle['rss_mb']:.1f} MB"
            )
            print(
                f"ready-to-relay latency after the poll (median of 5, upper bound: until "
                f"mark-sent): {idle['latency_ms']:.1f} ms (max {idle['latency_max_ms']:.1f} "
                f"ms); plus the schedule's wait (here {idle['wait_ms']:.0f} ms median)"
            )
        finally:
            await bench.stop()


if __name__ == "__main__":
    asyncio.run(main())
