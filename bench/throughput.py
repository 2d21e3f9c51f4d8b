"""Throughput, CPU, memory, idle cost and latency of the real daemon (issue: throughput).

Starts on loopback the Kanidm HTTPS stand-in (in this process) holding N ready messages and a
minimal implicit-TLS SMTP sink (its own process), runs the real daemon as a subprocess until
every message is marked sent, and prints messages/s, daemon CPU seconds per 1,000 messages and
peak RSS for each N; then the sequential path (mail_max_connections = 1), the raw ceiling
(bench/raw_client.py) and the ratios; then the idle figures and the ready-to-relay latency.

    .venv/bin/python bench/throughput.py [--sizes 1000,10000,100000] [--idle-seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
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


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Bench:
    def __init__(self, work: Path, profile: Path | None = None) -> None:
        self.work = work
        self.profile = profile
        self.certs: Certs = make_certs(work / "certs")
        self.kanidm = KanidmStandIn(TOKEN)
        self.sink: asyncio.subprocess.Process | None = None
        self.sink_port = 0

    async def start(self) -> None:
        await self.kanidm.start(self.certs.server_context())
        port_file = self.work / "sink.port"
        self.sink = await asyncio.create_subprocess_exec(
            sys.executable, str(HERE / "sink.py"), str(self.certs.cert_path),
            str(self.certs.key_path), str(port_file), stdout=asyncio.subprocess.PIPE)
        while not port_file.exists() or not port_file.read_text():
            await asyncio.sleep(0.05)
        self.sink_port = int(port_file.read_text())

    async def stop(self) -> None:
        if self.sink is not None:
            self.sink.send_signal(signal.SIGTERM)
            out, _ = await self.sink.communicate()
            print(f"  ({out.decode().strip()})")
        await self.kanidm.stop()

    def configs(self, name: str, **extra: object) -> tuple[Path, Path]:
        folder = self.work / name
        folder.mkdir()
        client = folder / "client.toml"
        client.write_text(f'uri = "{self.kanidm.url}"\nca_path = "{self.certs.ca_path}"\n')
        mail = folder / "mail-sender.toml"
        lines = [
            f'token = "{TOKEN}"', 'instance_display_name = "Kanidm Bench"',
            'instance_url = "https://idm.example.com"',
            'mail_from_address = "idm@example.com"', 'mail_reply_to_address = "r@example.com"',
            f'mail_relay = "smtps://127.0.0.1:{self.sink_port}"',
            f'mail_ca_path = "{self.certs.ca_path}"', f'state_dir = "{folder / "state"}"',
        ]
        lines += [f"{k} = {v!r}".replace("'", '"') for k, v in extra.items()]
        mail.write_text("\n".join(lines) + "\n")
        client.chmod(0o400)
        mail.chmod(0o400)
        return client, mail

    def queue(self, n: int) -> None:
        self.kanidm.messages.clear()
        self.kanidm.mark_calls.clear()
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
            *args, stderr=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL)

    async def run_daemon(self, name: str, n: int, **extra: object) -> dict[str, float]:
        self.queue(n)
        client, mail = self.configs(name, schedule="* * * * * *", **extra)
        calls = self.kanidm.list_calls
        proc = await self.daemon(client, mail)
        while self.kanidm.list_calls == calls:
            await asyncio.sleep(0.005)
        started, cpu0 = time.perf_counter(), cpu_seconds(proc.pid)
        while len(self.kanidm.sent()) < n:
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(proc.pid) - cpu0
        peak = peak_rss_mb(proc.pid)
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
        assert max(self.kanidm.mark_calls.values()) == 1
        return {"rate": n / elapsed, "cpu_per_1k": cpu / n * 1000, "peak_mb": peak,
                "seconds": elapsed}

    async def run_raw(self, n: int, concurrency: int) -> dict[str, float]:
        self.queue(n)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(HERE / "raw_client.py"), self.kanidm.url, TOKEN,
            str(self.certs.ca_path), str(self.sink_port), str(concurrency))
        started = time.perf_counter()
        cpu = 0.0
        while proc.returncode is None:
            try:
                cpu = cpu_seconds(proc.pid)
            except OSError:
                break
            await asyncio.sleep(0.02)
            if len(self.kanidm.sent()) >= n:
                break
        await proc.wait()
        elapsed = time.perf_counter() - started
        assert len(self.kanidm.sent()) == n
        return {"rate": n / elapsed, "cpu_per_1k": cpu / n * 1000, "seconds": elapsed}

    async def idle(self, seconds: float) -> dict[str, float]:
        self.queue(0)
        client, mail = self.configs("idle")
        proc = await self.daemon(client, mail)
        await asyncio.sleep(3)  # start-up is not idling
        cpu0 = cpu_seconds(proc.pid)
        await asyncio.sleep(seconds)
        cpu = cpu_seconds(proc.pid) - cpu0
        rss = rss_mb(proc.pid)
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
        return {"cpu_percent": cpu / seconds * 100, "rss_mb": rss,
                "latency_ms": samples[len(samples) // 2][0] * 1000,
                "latency_max_ms": max(s[0] for s in samples) * 1000,
                "wait_ms": samples[len(samples) // 2][1] * 1000}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--compare-size", type=int, default=10000)
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument("--profile", type=Path, help="write each daemon run's cProfile here")
    parser.add_argument("--only-daemon", action="store_true",
                        help="skip the comparison runs and the idle figures")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kms-bench-") as tmp:
        bench = Bench(Path(tmp), args.profile)
        await bench.start()
        try:
            print(f"{'run':<34} {'msgs':>7} {'msg/s':>8} {'CPU s/1k':>9} {'peak RSS MB':>12}")
            results = {}
            for n in (int(x) for x in args.sizes.split(",")):
                r = await bench.run_daemon(f"daemon-{n}", n)
                results[n] = r
                print(f"{'daemon (4 connections)':<34} {n:>7} {r['rate']:>8.0f} "
                      f"{r['cpu_per_1k']:>9.2f} {r['peak_mb']:>12.1f}", flush=True)
            if args.only_daemon:
                return
            n = args.compare_size
            seq = await bench.run_daemon("sequential", n, mail_max_connections=1)
            print(f"{'(a) daemon, mail_max_connections=1':<34} {n:>7} {seq['rate']:>8.0f} "
                  f"{seq['cpu_per_1k']:>9.2f} {seq['peak_mb']:>12.1f}", flush=True)
            raw = await bench.run_raw(n, 4)
            print(f"{'(b) raw ceiling (4 workers)':<34} {n:>7} {raw['rate']:>8.0f} "
                  f"{raw['cpu_per_1k']:>9.2f} {'':>12}", flush=True)
            main_rate = results.get(n, await bench.run_daemon("again", n))["rate"]
            print(f"\ndaemon / sequential = {main_rate / seq['rate']:.2f}x   "
                  f"daemon / raw ceiling = {main_rate / raw['rate'] * 100:.0f} %")
            idle = await bench.idle(args.idle_seconds)
            print(f"\nidle, empty queue, default schedule, {args.idle_seconds:.0f} s: "
                  f"CPU {idle['cpu_percent']:.2f} %  RSS {idle['rss_mb']:.1f} MB")
            print(f"ready-to-relay latency after the poll (median of 5, upper bound: until "
                  f"mark-sent): {idle['latency_ms']:.1f} ms (max {idle['latency_max_ms']:.1f} "
                  f"ms); plus the schedule's wait (here {idle['wait_ms']:.0f} ms median)")
        finally:
            await bench.stop()


if __name__ == "__main__":
    asyncio.run(main())
