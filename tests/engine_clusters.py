"""Real engines for the engine tests: a one-node SLURM cluster, a Ray head on 127.0.0.1, and a network
namespace that records every packet a process in it sends towards a non-loopback address.

Each helper says why it cannot run here (``Unavailable``) instead of failing, so the tests skip with
that reason; .ci/engines-setup.sh installs what they need.
"""
from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLURM_SCRIPT = os.path.join(REPO, ".ci", "slurm-cluster.sh")
CLONE_NEWNET = 0x40000000
ETH_P_ALL = 0x0003
# In the tests, Ray's HTTP requests (a cloud-metadata probe runs even with usage stats off) go to a
# loopback proxy that refuses them, instead of resolving and contacting outside addresses.
LOOPBACK_PROXIES = {k: "http://127.0.0.1:9" for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")}
LOOPBACK_PROXIES.update(no_proxy="127.0.0.1,localhost,::1", NO_PROXY="127.0.0.1,localhost,::1")


class Unavailable(RuntimeError):
    """An engine or facility this machine cannot provide; the message says why."""


def nslab(args: list[str], env: dict, **popen) -> subprocess.Popen:
    """``python -m nslab ARGS`` in a child process with this checkout first on PYTHONPATH."""
    env = {**env, "PYTHONPATH": os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH", "")) if p)}
    return subprocess.Popen([sys.executable, "-m", "nslab", *args], env=env, cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)


def finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    out, _ = process.communicate(timeout=timeout)
    return process.returncode, out


def wait_for(condition, timeout: float, what: str, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def epochs_done(run_dir: str) -> int:
    try:
        with open(os.path.join(run_dir, "epochs.csv")) as f:
            return max(0, len(f.read().splitlines()) - 1)
    except OSError:
        return 0


def run_released(run_dir) -> bool:
    """No process holds the run folder's lock: whatever trained in it has ended."""
    from nslab.locks import FolderInUse, exclusive

    try:
        with exclusive(str(run_dir)):
            return True
    except FolderInUse:
        return False


# -- a network namespace with a trap ------------------------------------------------------------
class Trap:
    """The namespace's only way out: a veth pair whose far end no one answers on; every frame sent
    there (an attempt to reach an address off this machine) is read here."""

    def __init__(self, sock: socket.socket):
        self.sock, self.seen = sock, []

    def contacts(self) -> list[str]:
        """Destinations of every frame sent towards the outside so far, e.g. ``TCP 169.254.169.254:80``."""
        while True:
            try:
                frame = self.sock.recv(65535)
            except BlockingIOError:
                return self.seen
            contact = _destination(frame)
            if contact:
                self.seen.append(contact)


def _destination(frame: bytes) -> str:
    kind = struct.unpack("!H", frame[12:14])[0]
    if kind == 0x0800:
        header, proto, dst = (frame[14] & 15) * 4, frame[23], ipaddress.ip_address(frame[30:34])
        payload = frame[14 + header:]
    elif kind == 0x86DD:
        proto, dst, payload = frame[20], ipaddress.ip_address(frame[38:54]), frame[54:]
    else:
        return ""  # no ARP or other link chatter: the gateway's address is pinned
    if dst.is_multicast:  # the link's own housekeeping (IPv6 neighbour discovery, MLD), not a contact
        return ""
    name = {6: "TCP", 17: "UDP", 1: "ICMP", 58: "ICMPv6"}.get(proto, f"IP proto {proto}")
    port = f":{struct.unpack('!H', payload[2:4])[0]}" if proto in (6, 17) and len(payload) >= 4 else ""
    return f"{name} {dst}{port}"


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode:
        raise Unavailable(f"ip {' '.join(args)}: {done.stderr.strip()}")


@contextlib.contextmanager
def isolated_network():
    """Run the block (this thread and every process it starts) in a new network namespace.

    Inside: loopback, and a default route (IPv4 and IPv6) into a trap interface, so that any attempt
    to reach another address leaves a frame the :class:`Trap` reads, with its destination. Ray picks
    its node address by asking the kernel for the route to 8.8.8.8 and 2001:4860:4860::8888 (a UDP
    connect, which sends nothing); those two are unreachable here, so Ray settles on 127.0.0.1.
    """
    if os.geteuid() != 0 or shutil.which("ip") is None or not sys.platform.startswith("linux"):
        raise Unavailable("a network namespace needs root, Linux and iproute2's ip")
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    if libc.unshare(CLONE_NEWNET) != 0:
        os.close(home)
        raise Unavailable(f"unshare(CLONE_NEWNET): {os.strerror(ctypes.get_errno())}")
    try:
        _ip("link", "set", "lo", "up")
        _ip("link", "add", "nstrap0", "type", "veth", "peer", "name", "nstrap1")
        _ip("link", "set", "nstrap0", "addrgenmode", "none")  # no link-local address, no router solicitation
        _ip("link", "set", "nstrap1", "addrgenmode", "none")
        _ip("link", "set", "nstrap0", "up")
        _ip("link", "set", "nstrap1", "up")
        _ip("addr", "add", "192.0.2.1/24", "dev", "nstrap0")  # TEST-NET-1 and the documentation prefix:
        _ip("-6", "addr", "add", "2001:db8::1/64", "dev", "nstrap0", "nodad")  # never anyone's real address
        mac = _mac("nstrap1")
        _ip("neigh", "add", "192.0.2.254", "lladdr", mac, "dev", "nstrap0", "nud", "permanent")
        _ip("-6", "neigh", "add", "2001:db8::fffe", "lladdr", mac, "dev", "nstrap0", "nud", "permanent")
        _ip("route", "add", "default", "via", "192.0.2.254", "dev", "nstrap0")
        _ip("-6", "route", "add", "default", "via", "2001:db8::fffe", "dev", "nstrap0")
        _ip("route", "add", "unreachable", "8.8.8.8/32")
        _ip("-6", "route", "add", "unreachable", "2001:4860:4860::8888/128")
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.bind(("nstrap1", 0))
        sock.setblocking(False)
        with sock:
            yield Trap(sock)
    finally:
        libc.setns(home, CLONE_NEWNET)
        os.close(home)


def _mac(device: str) -> str:
    out = subprocess.run(["ip", "-o", "link", "show", device], capture_output=True, text=True).stdout
    return out.split("link/ether", 1)[1].split()[0]


def outside_peers() -> list[str]:
    """TCP sockets of this namespace whose peer is not a loopback address (``ss``), as 'local -> peer'."""
    if shutil.which("ss") is None:
        return []
    out = subprocess.run(["ss", "-Htn", "state", "all"], capture_output=True, text=True).stdout
    peers = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        host = parts[-1].rsplit(":", 1)[0].strip("[]")
        if host in ("*", "0.0.0.0", "::"):
            continue
        try:
            address = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            peers.append(f"{parts[-2]} -> {parts[-1]}")
            continue
        mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is loopback too
        if not (address.is_loopback or (mapped is not None and mapped.is_loopback)):
            peers.append(f"{parts[-2]} -> {parts[-1]}")
    return peers


# -- SLURM ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def slurm_cluster():
    """A one-node SLURM cluster on 127.0.0.1 (.ci/slurm-cluster.sh); yields its slurm.conf."""
    if os.geteuid() != 0:
        raise Unavailable("a test SLURM cluster needs root (slurmd runs jobs as their user)")
    missing = [t for t in ("munged", "slurmctld", "slurmd", "sbatch", "srun") if not shutil.which(t)
               and not os.path.exists(f"/usr/sbin/{t}")]
    if missing:
        raise Unavailable(f"SLURM is not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge")
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise Unavailable("submitit is not installed: pip install 'nslab[slurm]'") from None
    folder = tempfile.mkdtemp(prefix="nsslurm")  # short: munge's socket path must fit a sockaddr
    done = subprocess.run(["bash", SLURM_SCRIPT, "start", folder], capture_output=True, text=True, timeout=180)
    if done.returncode:
        shutil.rmtree(folder, ignore_errors=True)
        raise Unavailable(f"the one-node SLURM cluster did not start: {done.stderr.strip()[-600:]}")
    try:
        yield os.path.join(folder, "slurm.conf")
    finally:
        subprocess.run(["bash", SLURM_SCRIPT, "stop", folder], capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


def squeue_state(job_id: str, conf: str) -> str:
    out = subprocess.run(["squeue", "--noheader", "--states=all", "--format=%T", f"--jobs={job_id}"],
                         capture_output=True, text=True, env={**os.environ, "SLURM_CONF": conf}).stdout
    return out.strip()


# -- Ray -----------------------------------------------------------------------------------------
@contextlib.contextmanager
def ray_head(env: dict, cpus: int = 2):
    """``ray start --head --block`` on 127.0.0.1 (this process's child: stopping it stops the cluster);
    yields its address. ``env`` must carry the telemetry settings."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise Unavailable("Ray is not installed: pip install 'nslab[ray]'") from None
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    if not os.path.exists(ray_bin):
        raise Unavailable(f"{ray_bin} not found")
    folder = tempfile.mkdtemp(prefix="nsray")  # short: Ray's socket paths must fit a sockaddr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = os.path.join(folder, "ray-start.log")
    env = {**env, "PYTHONPATH": os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH", "")) if p)}
    with open(log_path, "w") as log:
        head = subprocess.Popen([ray_bin, "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                                 f"--port={port}", f"--num-cpus={cpus}", "--num-gpus=0", "--include-dashboard=false",
                                 "--disable-usage-stats", f"--temp-dir={folder}"],
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in open(log_path).read():
            if head.poll() is not None or time.monotonic() > deadline:
                raise Unavailable(f"ray start did not start a head: {open(log_path).read()[-600:]}")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}", open(log_path).read()
    finally:
        head.send_signal(signal.SIGTERM)  # ray start --block's reaper then stops the processes it started
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):  # anything left in its process group (all ours)
            os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        shutil.rmtree(folder, ignore_errors=True)
