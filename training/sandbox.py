"""Run model-written Python in a throwaway, locked-down process (the code reward's executor).

Three processes per run: the trainer (this module) starts a *supervisor* (this file run as a script,
in a new session), which starts the *guest* interpreter (`python -I -S -B`, stdlib only, empty
environment, cwd = a fresh workdir) and reports its exit status and CPU time on a private pipe. The
trainer reads at most `max_output_bytes` of stdout and of stderr, enforces the wall clock, then kills
the supervisor's group; the supervisor kills the guest's session (and, without namespaces, every
process of the guest's uid) before it exits. Which layers are used is probed once per trainer process
(`available_isolation()`, the first candidate that runs `print('ok')`):

| layer | what rests on it | kind |
| --- | --- | --- |
| namespaces (root only) | new mount, pid, net, ipc and uts namespaces; `pivot_root` into a tmpfs root holding read-only binds of /usr (+ the /bin, /lib symlinks), the Python install, /etc/ld.so.cache and four /dev nodes, plus `/sandbox`: the only writable place, a size-capped noexec tmpfs that vanishes with the namespace. The host's files (the repo, /root, /tmp) are not mounted at all; the network namespace has only a down loopback; the guest sees only its own pids, so it cannot signal the trainer | kernel |
| uid (root only) | a fresh random uid per run, no capabilities, no_new_privs: cannot signal root's processes, RLIMIT_NPROC counts only this run's processes, setuid binaries do not elevate. NOTE: without namespaces it does not confine files: world-readable files (the repo) and world-writable dirs (/tmp) stay open to any uid, so there only the hook keeps them out | kernel |
| rlimits | per process: CPU seconds (SIGXCPU, then SIGKILL a second later), address space, file size, open files, no core files; processes per uid | kernel |
| audit hook | a `sys.addaudithook` policy installed before the program runs: no sockets, no kill/killpg/pidfd, no fork/exec/subprocess, no ctypes, `open`/listdir only under the workdir and the Python install, writes and renames only in the workdir | best effort |

On this kind of machine (root, unshare allowed) all four are on. NOTE what is NOT guaranteed:
memory is capped per process, so a program may hold up to `max_processes * memory_mb` (no cgroup);
the kernel is shared (no seccomp filter), so a kernel exploit escapes; /usr and the Python install are
readable. The audit hook is not a security boundary (CPython says so): frame/closure introspection or
monkeypatching `os` can defeat it, and where it is the only layer (no root, or unshare refused) a
determined program could read the trainer user's files or signal its processes. A killed supervisor
cannot leave a guest behind: the guest has PR_SET_PDEATHSIG, and a pid namespace dies with its init.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass

# NOTE: this file is also the supervisor's script, so modules only the trainer needs (subprocess,
# selectors, tempfile, shutil, concurrent.futures) are imported inside its functions: every import
# here is paid again at the start of every run.

# The guest runs the real interpreter (not the venv's link) so only its install needs mounting.
_PYTHON = os.path.realpath(sys.executable)
_PREFIXES = sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)})
_GUEST_WORKDIR = "/sandbox"  # inside the namespaces


@dataclass(frozen=True)
class Limits:
    cpu_seconds: float = 2  # per process; RLIMIT_CPU rounds up to whole seconds
    wall_seconds: float = 5
    memory_mb: int = 512  # address space per process
    file_size_mb: int = 1  # largest file; the namespaced workdir holds 8x this (at least 16 MB)
    max_processes: int = 32
    max_output_bytes: int = 64_000  # per stream; more kills the run


@dataclass
class SandboxResult:
    status: str  # "passed" | "failed" | "timeout" | "memory" | "output_limit" | "killed" | "error"
    returncode: int | None  # the guest's; negative for a signal; None when unknown
    stdout: str
    stderr: str
    wall_seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass(frozen=True)
class Isolation:
    namespaces: bool  # mount/pid/net/ipc/uts namespaces and a minimal read-only root
    drop_uid: bool  # a fresh unprivileged uid per run
    audit_hook: bool  # the in-process policy hook


def run_python(code: str, limits: Limits = Limits(), isolation: Isolation | None = None) -> SandboxResult:
    """Run `code` as `main.py` under `limits`; `isolation` defaults to the strongest the machine allows."""
    import shutil
    import subprocess
    import tempfile

    iso = isolation or available_isolation()
    if iso.namespaces and not iso.drop_uid:  # root in the first user namespace could mknod the disk
        raise ValueError(f"{iso}: namespaces need drop_uid=True")
    start = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="seekflow-sandbox-")
    status_r, status_w = os.pipe()
    try:
        with open(os.path.join(workdir, "main.py"), "w", encoding="utf-8") as f:
            f.write(code)
        uid = (1 << 30) + int.from_bytes(os.urandom(4), "little") % (1 << 30)  # a uid nothing else runs as
        spec = dict(
            workdir=workdir, status_fd=status_w, namespaces=iso.namespaces, hook=iso.audit_hook,
            uid=uid if iso.drop_uid else None, python=_PYTHON, prefixes=_PREFIXES, guest_source=_guest_source(),
            cpu=math.ceil(limits.cpu_seconds), wall=limits.wall_seconds, memory_mb=limits.memory_mb,
            file_size_mb=limits.file_size_mb, max_processes=limits.max_processes,
        )
        proc = subprocess.Popen(
            [_PYTHON, "-I", "-S", "-B", os.path.abspath(__file__), json.dumps(spec)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(status_w,), start_new_session=True, env={"PATH": "/usr/bin:/bin"}, cwd=workdir,
        )
        os.close(status_w)
        status_w = -1
        deadline = start + limits.wall_seconds
        out, err, reason = _collect(proc, limits.max_output_bytes, deadline)
        if reason is None:
            try:  # the guest may close its pipes and keep running
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                reason = "timeout"
        if reason is not None:
            _stop(proc)
        proc.wait()
        records = _read_records(status_r)
    finally:
        for fd in (status_r, status_w):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(workdir, ignore_errors=True)
    stderr = err.decode("utf-8", "replace")
    status, rc = _classify(reason, records, stderr, limits)
    return SandboxResult(status, rc, out.decode("utf-8", "replace"), stderr, time.monotonic() - start)


class SandboxPool:
    """Many sandboxes at once: threads that each drive one subprocess (the work is in the children)."""

    def __init__(self, workers: int = 4, limits: Limits = Limits(), isolation: Isolation | None = None):
        from concurrent.futures import ThreadPoolExecutor

        self.limits, self.isolation = limits, isolation or available_isolation()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox")

    def map(self, codes: list[str]) -> list[SandboxResult]:
        return list(self._executor.map(lambda c: run_python(c, self.limits, self.isolation), codes))

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@functools.cache
def available_isolation() -> Isolation:
    """The strongest layering that runs a trivial program here; probed once per process."""
    candidates = [Isolation(True, True, True), Isolation(False, True, True)] if os.geteuid() == 0 else []
    for iso in [*candidates, Isolation(False, False, True)]:
        r = run_python("print('ok')", Limits(), iso)
        if r.passed and r.stdout == "ok\n":
            return iso
    raise RuntimeError(f"the sandbox cannot run even with the audit hook alone: {r.status}: {r.stderr[-500:]}")


# ---------------------------------------------------------------- trainer side: output, stop, verdict

def _collect(proc: subprocess.Popen, cap: int, deadline: float) -> tuple[bytes, bytes, str | None]:
    """Read both pipes until EOF, the deadline ("timeout") or more than `cap` bytes on one ("output_limit")."""
    import selectors

    bufs = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    reason = None
    with selectors.DefaultSelector() as sel:
        for pipe in bufs:
            sel.register(pipe, selectors.EVENT_READ)
        while sel.get_map() and reason is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                reason = "timeout"
                break
            for key, _ in sel.select(remaining):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf = bufs[key.fileobj]
                if len(buf) + len(chunk) > cap:
                    buf += chunk[: cap - len(buf)]  # NOTE: never hold more than the cap
                    reason = "output_limit"
                    break
                buf += chunk
    return bytes(bufs[proc.stdout]), bytes(bufs[proc.stderr]), reason


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM lets the supervisor kill the guest and its uid; SIGKILL a second later if it has not."""
    import subprocess

    for sig, grace in ((signal.SIGTERM, 1.0), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)  # the supervisor's group (start_new_session): it, and init in a namespace
            proc.wait(timeout=grace)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


def _read_records(fd: int) -> list[dict]:
    """The supervisor's JSON lines; its writers are gone by now, so a non-blocking read sees them all."""
    os.set_blocking(fd, False)
    data = b""
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def _classify(reason: str | None, records: list[dict], stderr: str, limits: Limits) -> tuple[str, int | None]:
    final = next((r for r in records if "returncode" in r), None)
    rc = final["returncode"] if final else None
    if reason is not None:
        return reason, rc
    if any("error" in r for r in records):
        return "error", rc
    if final is None:  # the supervisor died before reporting: something killed it
        return "killed", None
    if rc == 0:
        return "passed", rc
    if rc == -signal.SIGXCPU or (rc == -signal.SIGKILL and final["cpu"] >= limits.cpu_seconds):
        return "timeout", rc
    if any(line.startswith("MemoryError") for line in stderr.splitlines()[-3:]):
        return "memory", rc
    return ("killed" if rc < 0 else "failed"), rc


@functools.cache
def _guest_source() -> str:
    import inspect
    import textwrap

    return textwrap.dedent(inspect.getsource(_guest))


# ---------------------------------------------------------------- supervisor (this file as a script)

# NOTE: Linux constants (linux/sched.h, linux/mount.h); the pivot_root syscall number is per architecture.
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x4000000, 0x8000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
MNT_DETACH, PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 2, 1, 36, 38
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
DEVICES = ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom")


def _supervisor(spec: dict) -> None:
    fd = spec["status_fd"]
    try:
        if spec["namespaces"]:
            _enter_namespaces(spec)
            init = os.fork()  # the first child is pid 1 of the new pid namespace
            if init:
                os.close(fd)
                os.waitpid(init, 0)
                os._exit(0)
        else:  # orphaned descendants come back to us to be reaped (pid 1 of a namespace gets them anyway)
            _sys(_libc().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(CHILD_SUBREAPER)")
            if spec["uid"] is not None:
                os.chown(spec["workdir"], spec["uid"], spec["uid"])
        _supervise(spec, fd)
    except BaseException as e:  # report, never raise: the trainer reads the pipe
        os.write(fd, json.dumps({"error": f"supervisor: {type(e).__name__}: {e}"}).encode() + b"\n")
        os._exit(1)


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _sys(ret: int, what: str) -> None:
    if ret != 0:
        import ctypes

        raise OSError(ctypes.get_errno(), f"{what}: {os.strerror(ctypes.get_errno())}")


def _enter_namespaces(spec: dict) -> None:
    """Unshare, then build the guest's root on a tmpfs over the host workdir and pivot into it."""
    libc = _libc()
    with open(os.path.join(spec["workdir"], "main.py"), "rb") as f:
        program = f.read()  # read before the tmpfs hides it

    def mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str | None = None) -> None:
        enc = lambda s: s.encode() if s is not None else None  # noqa: E731
        _sys(libc.mount(enc(src), enc(dst), enc(fstype), flags, enc(data)), f"mount {src} on {dst}")

    def bind(src: str, dst: str, flags: int) -> None:
        if os.path.isdir(src):
            os.makedirs(dst, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            open(dst, "a").close()
        mount(src, dst, None, MS_BIND | MS_REC)
        mount(None, dst, None, MS_BIND | MS_REMOUNT | flags)  # bind flags apply only on a remount

    _sys(libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS), "unshare")
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing mounted below leaks back to the host
    root, ro = spec["workdir"], MS_RDONLY | MS_NOSUID | MS_NODEV
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    for top in ("usr", "bin", "sbin", "lib", "lib32", "lib64"):
        if os.path.islink("/" + top):  # merged /usr: /bin -> usr/bin
            os.symlink(os.readlink("/" + top), f"{root}/{top}")
        elif os.path.isdir("/" + top):
            bind("/" + top, f"{root}/{top}", ro)
    for path in spec["prefixes"] + ["/etc/ld.so.cache"]:
        if os.path.exists(path) and not (path + "/").startswith("/usr/"):
            bind(path, root + path, ro)
    for dev in DEVICES:
        bind(dev, root + dev, MS_NOSUID | MS_NOEXEC)
    work, uid = root + _GUEST_WORKDIR, spec["uid"] or 0
    os.mkdir(work)
    size = max(16, 8 * spec["file_size_mb"])
    mount("tmpfs", work, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, f"size={size}m,nr_inodes=4096,mode=0700,uid={uid},gid={uid}")
    with open(f"{work}/main.py", "wb") as f:
        f.write(program)
    os.chown(f"{work}/main.py", uid, uid)
    os.chdir(root)
    # pivot_root(".", ".") stacks the old root under the new one; detaching it leaves no way back
    _sys(libc.syscall(SYS_PIVOT_ROOT[os.uname().machine], b".", b"."), "pivot_root")
    _sys(libc.umount2(b".", MNT_DETACH), "umount old root")
    os.chdir("/")
    mount(None, "/", None, MS_REMOUNT | ro)


def _supervise(spec: dict, fd: int) -> None:
    """Start the guest, wait for it, report; on SIGTERM (the trainer) or the alarm kill it first."""
    def stop(signum: int, frame: object) -> None:
        _kill_guest(guest, spec)
        _reap(spec)
        os._exit(128 + signum)

    guest = 0
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGALRM, stop)
    signal.alarm(math.ceil(spec["wall"]) + 2)  # backstop should the trainer die
    guest = os.fork()
    if guest == 0:
        _exec_guest(spec, fd)
    os.waitid(os.P_PID, guest, os.WEXITED | os.WNOWAIT)  # keep the zombie: its pid (= pgid) cannot be reused
    signal.alarm(0)
    _kill_guest(guest, spec)
    _, status, usage = os.wait4(guest, 0)
    report = {"returncode": os.waitstatus_to_exitcode(status), "cpu": usage.ru_utime + usage.ru_stime}
    os.write(fd, json.dumps(report).encode() + b"\n")
    _reap(spec)
    os._exit(0)


def _kill_guest(guest: int, spec: dict) -> None:
    if guest <= 0:
        return
    if spec["namespaces"]:
        os.kill(-1, signal.SIGKILL)  # from pid 1: every other process of the namespace, whatever its session
        return
    try:
        os.killpg(guest, signal.SIGKILL)  # the guest's session (it called setsid)
    except ProcessLookupError:
        pass
    if spec["uid"] is not None:  # descendants that left the session: everything the fresh uid runs
        reaper = os.fork()
        if reaper == 0:
            try:
                os.setresuid(spec["uid"], spec["uid"], spec["uid"])
                os.kill(-1, signal.SIGKILL)  # as that uid: every process of it but this one
            finally:
                os._exit(0)
        os.waitpid(reaper, 0)


def _reap(spec: dict) -> None:
    """Collect the killed descendants; block only when all of them were killed (namespace or uid)."""
    block = spec["namespaces"] or spec["uid"] is not None
    while True:
        try:
            if os.waitpid(-1, 0 if block else os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def _exec_guest(spec: dict, fd: int) -> None:
    import resource

    try:
        for sig in (signal.SIGTERM, signal.SIGALRM):
            signal.signal(sig, signal.SIG_DFL)
        os.setsid()  # its own session: kill(0, ...) in the guest reaches only its own processes
        uid = spec["uid"]
        if uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        libc = _libc()
        _sys(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")  # after setuid, which clears it
        _sys(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
        mb = 1 << 20
        for res, soft, hard in [
            (resource.RLIMIT_CPU, spec["cpu"], spec["cpu"] + 1),  # SIGXCPU, then SIGKILL
            (resource.RLIMIT_AS, spec["memory_mb"] * mb, spec["memory_mb"] * mb),
            (resource.RLIMIT_FSIZE, spec["file_size_mb"] * mb, spec["file_size_mb"] * mb),
            (resource.RLIMIT_NPROC, spec["max_processes"], spec["max_processes"]),
            (resource.RLIMIT_NOFILE, 256, 256),
            (resource.RLIMIT_CORE, 0, 0),
        ]:
            resource.setrlimit(res, (soft, hard))
        workdir = _GUEST_WORKDIR if spec["namespaces"] else spec["workdir"]
        os.chdir(workdir)
        os.set_inheritable(fd, False)  # the status pipe closes at exec
        source = spec["guest_source"] + f"\n_guest({workdir!r}, {spec['prefixes']!r}, {spec['hook']!r})\n"
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"}
        os.execve(spec["python"], [spec["python"], "-I", "-S", "-B", "-X", "utf8", "-c", source], env)
    except BaseException as e:
        os.write(fd, json.dumps({"error": f"guest setup: {type(e).__name__}: {e}"}).encode() + b"\n")
        os._exit(126)


# ---------------------------------------------------------------- guest (shipped as source via -c)

def _guest(workdir: str, read_roots: list[str], hook: bool) -> None:  # pragma: no cover - runs in the sandbox
    """Compile main.py, install the audit-hook policy, run the program as __main__."""
    import os
    import sys

    with open("main.py", "rb") as f:
        program = compile(f.read(), "main.py", "exec")
    if hook:
        import _signal
        import signal

        for module, name in ((os, "pidfd_open"), (signal, "pidfd_send_signal"), (_signal, "pidfd_send_signal")):
            module.__dict__.pop(name, None)  # pidfd signals raise no audit event
        writable = (os.path.realpath(workdir),)
        readable = writable + tuple(read_roots)
        never = frozenset({
            "os.kill", "os.killpg", "signal.pthread_kill", "os.fork", "os.forkpty", "os.exec", "os.posix_spawn",
            "os.spawn", "os.system", "subprocess.Popen", "os.symlink", "os.link", "ctypes.dlopen",
            "gc.get_objects", "gc.get_referrers", "gc.get_referents", "resource.setrlimit", "resource.prlimit",
        })
        # already imported (a new import means sys.modules was emptied to get them back) or never allowed
        no_import = frozenset({"os", "posix", "signal", "_signal", "ctypes", "_ctypes", "_posixsubprocess"})
        path_events = frozenset({
            "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.truncate",
            "os.utime", "os.chdir", "os.setxattr", "os.removexattr", "os.chflags", "os.lchflags",
        })
        write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

        # NOTE: everything the hook uses is bound as a default, so rebinding os.path.* does not change it
        def inside(path, roots, realpath=os.path.realpath, isabs=os.path.isabs) -> bool:
            if isinstance(path, int):
                return True  # an open descriptor: opening it was checked
            # CPython passes the path after os.fspath; copy it to an exact str, as a str subclass could
            # answer `==` and `split` as it likes
            if isinstance(path, str):
                p = str.encode(path, "utf-8", "surrogateescape").decode("utf-8", "surrogateescape")
            elif isinstance(path, bytes):
                p = bytes.decode(path, "utf-8", "surrogateescape")
            else:
                return False
            if p in ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom"):
                return True
            if not isabs(p) and ".." in p.split("/"):
                return False  # it may be relative to a dir_fd the hook cannot see
            real = realpath(p)
            return any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots)

        def audit(event, args, inside=inside, isdir=os.path.isdir, never=never, no_import=no_import,
                  path_events=path_events, writable=writable, readable=readable, write_flags=write_flags):
            if event in never or event.startswith("socket."):
                raise PermissionError(f"sandbox: {event} is not allowed")
            if event == "import" and args[0] in no_import:
                raise PermissionError(f"sandbox: importing {args[0]} is not allowed")
            if event == "open":
                path, mode, flags = args
                write = bool((flags or 0) & write_flags) or any(c in (mode or "") for c in "wax+")
                if not inside(path, writable if write else readable):
                    raise PermissionError(f"sandbox: {path!r} is outside the sandbox")
                if not isinstance(path, int) and isdir(path) and not inside(path, writable):
                    raise PermissionError(f"sandbox: directory {path!r} cannot be opened")  # no dir_fd outside
            elif event in ("os.listdir", "os.scandir") and not inside(args[0] or ".", readable):
                raise PermissionError(f"sandbox: {args[0]!r} is outside the sandbox")
            elif event in path_events:
                for path in args[:2] if event == "os.rename" else args[:1]:
                    if not inside(path, writable):
                        raise PermissionError(f"sandbox: {path!r} is outside the sandbox")
            elif event == "object.__setattr__" and args[1] == "__code__":
                raise PermissionError("sandbox: replacing function code is not allowed")

        sys.addaudithook(audit)
        del audit, inside  # from here only the interpreter holds the hook (gc's lists are refused)
    sys.argv = ["main.py"]
    main = sys.modules["__main__"].__dict__  # the program's module is the real __main__ (pickle, typing)
    main.pop("_guest")
    main["__file__"] = "main.py"
    exec(program, main)


if __name__ == "__main__":
    _supervisor(json.loads(sys.argv[1]))
