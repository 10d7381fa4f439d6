"""Running untrusted Python (a model's tool call) in a separate, limited, isolated interpreter.

:func:`run_python` writes the code to a fresh private working directory (mode 0700, deleted
afterwards) and runs it with the caller's interpreter as ``sys.executable -I -S -B`` (no
``PYTHON*`` variables or user site, no site-packages, so the standard library only, and no
bytecode writes). What holds is enforced by the kernel, from outside the program's interpreter; the
audit hook inside it is a backstop that code running in the same process can defeat.

===============================  =======================================================================
Layer                            What it does
===============================  =======================================================================
Linux namespaces (``unshare``)   A new network namespace (only a loopback that is down: nothing to
                                 connect to), a new PID namespace with its own ``/proc`` (the
                                 program sees no process outside the sandbox; when the sandbox's
                                 first process exits the kernel kills every other one), a new mount
                                 namespace and, where allowed, a user namespace. The best
                                 combination the machine allows is probed once by running a real
                                 sandbox under each (:func:`namespace_wrapper`); none is used when
                                 ``unshare`` is missing or every combination fails.
Read-only file system            In the mount namespace, before the program exists, the supervisor
                                 remounts every mount read-only except the working directory (a
                                 bind mount of itself), hides ``/tmp``, ``/var/tmp``, ``/run``,
                                 ``/root`` and ``/home`` under empty read-only tmpfs (binding back
                                 only the working directory and the Python installation), and
                                 replaces ``/dev`` by a tmpfs holding ``null``, ``zero``, ``full``,
                                 ``random`` and ``urandom`` (plus a small private ``/dev/shm`` when
                                 processes are allowed). Setup failing fails the call: the program
                                 never runs without it.
No capabilities                  The supervisor sets ``no_new_privs``, drops every capability (bounding,
                                 ambient, effective, permitted, inheritable) and makes itself
                                 non-dumpable before it forks the program, so the program (root in
                                 its user namespace at most) cannot remount, unmount, ptrace, or
                                 open the supervisor's ``/proc`` entries (its status pipe).
rlimits                          CPU seconds (``RLIMIT_CPU``: ``SIGXCPU`` at the limit, ``SIGKILL``
                                 a second later), address space (``RLIMIT_AS``), processes
                                 (``RLIMIT_NPROC``), file size (``RLIMIT_FSIZE``), 256 open files,
                                 no core dumps. Set as hard limits in the program's process.
Audit hook (PEP 578)             A backstop installed before the program runs. Denies sockets, new
                                 processes, ``ctypes``, killing processes, changing rlimits,
                                 tracing, sub-interpreters; writing, creating, deleting, renaming or
                                 chmod-ing anything outside the working directory (also through a
                                 file descriptor); reading files outside the working directory and
                                 the standard library; opening directories outside the working
                                 directory, ``chdir`` and symlinks; importing C modules that act
                                 behind the hook's back (``_posixsubprocess``, ``_sqlite3``,
                                 ``_ctypes``, shared memory...) under any name or file name. What
                                 CPython does not audit is deleted from the program's modules
                                 (``os.mkfifo``, ``os.mknod``, ``os.pidfd_open``,
                                 ``signal.pidfd_send_signal``, ``os.setpriority``,
                                 ``os.sched_set*``, ``_imp.create_builtin``). The hook binds all it
                                 uses when installed, keeps no mutable state and never calls the
                                 program's code, so monkeypatching ``os.path`` or editing its
                                 closure through frames changes nothing.
Supervision                      A trusted supervisor process forks the program, waits for it and
                                 reports its exit status and CPU time on a pipe the program never
                                 holds. The parent enforces the wall time and output caps (stdout
                                 and stderr read incrementally); to stop a run it closes a pipe, and
                                 the supervisor kills the program and every process left below it
                                 (it is a subreaper, or PID 1 of the PID namespace), so nothing is
                                 left behind, not even a zombie when the caller is a subreaper or
                                 PID 1. The process group is then SIGKILLed as a backstop. The
                                 supervisor also kills the program a second after the wall time,
                                 or at once if the parent dies.
Scrubbed environment             Only ``PATH``, ``LANG``, ``LC_ALL``, ``HOME`` and ``TMPDIR`` (the
                                 last two are the working directory).
===============================  =======================================================================

What it does NOT protect against:

* It is not a security boundary against a determined attacker: nothing here stops kernel exploits
  or a bug in CPython, and the audit hook runs inside the attacked process (PEP 578 says hooks
  cannot sandbox Python). Run hostile code in a VM or a gVisor-like runtime; this sandbox contains
  the mistakes and reward hacks of a model.
* World-readable files outside the hidden directories (``/etc``, ``/usr``, ``/opt``, the project's
  directory...) stay readable at the OS level: only the audit hook stops reading them. Unix sockets
  outside the hidden directories can be connected to if the hook is bypassed (a network namespace
  does not isolate path-bound sockets; a read-only mount does not stop ``connect``).
* Linux exempts uid 0 from ``RLIMIT_NPROC``: as root, a fork bomb that got past the hook is bounded
  by the wall time and the teardown, not by a count (no pids cgroup is set up).
* Disk use is bounded per file (``RLIMIT_FSIZE``), not in total.
* By design these do not work inside: sockets, subprocesses (unless ``allow_processes``),
  ``os.chdir``, ``os.symlink``, third-party packages, and more than a few dozen threads (each
  reserves stack address space under ``RLIMIT_AS``).
* Without a mount namespace (no ``unshare``, or one that may not mount), files are protected by the
  audit hook alone and any file the user may write is at risk once it is bypassed; without a PID
  namespace, the program could signal the user's other processes once the hook is bypassed; without
  a network namespace, only the hook keeps it off the network.

The functions from ``_sandbox_main`` down run in the sandboxed interpreter: their source is sent
with ``-c``, so they use the standard library only and import inside their bodies. Nothing in the
parent changes global state (no signal handlers, no ``chdir``, no ``preexec_fn``, which is unsafe in
a multi-threaded parent), so :func:`run_python` may be called from many threads at once.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import marshal
import math
import os
import select
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any

from envs import isolation

NAMESPACE_FLAGS: tuple[tuple[str, ...], ...] = (
    ("--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child", "--mount-proc"),
    ("--net", "--pid", "--fork", "--kill-child", "--mount-proc"),
    ("--user", "--map-root-user", "--net", "--mount"),
    ("--net", "--mount"),
    ("--user", "--map-root-user", "--net"),
    ("--net",),
)
"""``unshare`` flag sets tried in order; the first that runs a sandboxed program is used.

With ``--mount`` or ``--mount-proc`` the supervisor makes the file system read-only; a set whose
mount setup fails on this machine is skipped by the probe."""

MAX_CONCURRENT_RUNS = 2 * (os.cpu_count() or 1)
"""Programs run at once per process; further calls wait for a slot (the wait is not wall time).

The env runner steps many episodes from a thread pool; without a cap, a hundred interpreters on
two cores would thrash and hit their wall-time limits for want of CPU."""
_SLOTS = threading.BoundedSemaphore(MAX_CONCURRENT_RUNS)

_CGROUP_SLACK_MB = 64
"""Memory of a call's cgroup beyond ``memory_mb`` and ``disk_mb``: the supervisor and bwrap."""
_GRACE_S = 0.5
"""How long to keep reading output after the sandbox's supervisor exited."""
_STOP_TIMEOUT_S = 3.0
"""How long the supervisor gets to end the program and exit before its process group is SIGKILLed."""
_CHUNK = 65536
_STATUS_CAP = 4096
"""Bytes kept of the supervisor's status report (a few dozen are expected)."""
_CPU_MEASURED_FRACTION = 0.8
"""The part of ``RLIMIT_CPU`` the measured CPU time must reach for a SIGXCPU to count as the limit.

The kernel's check and the CPU time reported by ``wait4`` are accounted differently; the latter was
seen up to 8% short of the limit when the limit was hit."""


@dataclass(frozen=True)
class SandboxResult:
    """The outcome of :func:`run_python`.

    Attributes:
        ok: True when the program exited with status 0 and no limit was hit.
        stdout: What the program printed (at most ``max_output_chars`` bytes, never a split
            character; UTF-8, invalid bytes replaced).
        stderr: What it wrote to stderr (tracebacks), with the same cap.
        exit_code: The program's exit status, or None when a signal or the sandbox ended it.
        signal: Name of the signal that killed the program (e.g. ``"SIGXCPU"``), or None.
        error: What went wrong, or None when ``ok``: a limit (``"wall time limit (5 s) exceeded"``,
            ``"CPU time limit (2 s) exceeded"``, ``"memory limit (256 MB) exceeded"``, ``"file size
            limit (16 MB) exceeded"``, ``"output limit (20000 bytes) exceeded; output
            truncated"``), ``"exit code N"``, ``"killed by signal SIGSEGV"`` or a sandbox failure.
        truncated: Whether stdout or stderr was cut at ``max_output_chars``.
        wall_time_s: Seconds from start to the end of the call's processes.
        cpu_time_s: CPU seconds the program (and what it waited for) used; None when it was killed
            from outside before reporting.
    """

    ok: bool
    stdout: str
    stderr: str
    exit_code: int | None
    signal: str | None
    error: str | None
    truncated: bool
    wall_time_s: float
    cpu_time_s: float | None


@dataclass(frozen=True)
class _Limits:
    cpu_time_s: float
    wall_time_s: float
    memory_mb: int
    max_processes: int
    max_file_mb: int
    max_output_chars: int


_PROBE_LIMITS = _Limits(10.0, 30.0, 512, 16, 16, 20_000)


@dataclass(frozen=True)
class _Status:
    """What the sandbox's supervisor reported: exit code or signal number, and CPU seconds."""

    exit_code: int | None
    signal: int | None
    cpu_time_s: float
    file_at_limit: bool = False


def run_python(
    code: str,
    *,
    cpu_time_s: float = 5.0,
    wall_time_s: float = 10.0,
    memory_mb: int = 512,
    max_processes: int = 16,
    max_file_mb: int = 16,
    max_output_chars: int = 20_000,
    allow_processes: bool = False,
    disk_mb: int = 64,
    isolator: bool = True,
    allow_weak_sandbox: bool = False,
    use_namespaces: bool = True,
) -> SandboxResult:
    """Runs ``code`` as a Python program in the sandbox (see the module docstring) and waits for it.

    Thread-safe; at most :data:`MAX_CONCURRENT_RUNS` programs run at once, further calls wait.

    Args:
        code: The program's source; it runs as ``__main__`` in a private working directory.
        cpu_time_s: CPU seconds before ``SIGXCPU`` (``RLIMIT_CPU``, whole seconds, rounded up).
        wall_time_s: Seconds before the program is killed.
        memory_mb: Address-space limit of each process (``RLIMIT_AS``).
        max_processes: ``RLIMIT_NPROC``: processes and threads of the user (of the user namespace,
            when there is one); not enforced by Linux for root.
        max_file_mb: Largest file the program may write (``RLIMIT_FSIZE``).
        max_output_chars: Bytes kept of each of stdout and stderr; the program is killed when it
            writes more.
        allow_processes: Let the program fork and run subprocesses (still confined to the
            namespaces, the read-only file system and the limits, and killed with the call).
        disk_mb: Size of the working directory's tmpfs (all files together) under the isolator.
        isolator: Run under the isolator (:mod:`envs.isolation`: bubblewrap and seccomp). False
            runs the weak built-in layers, which needs ``allow_weak_sandbox``.
        allow_weak_sandbox: Where the isolator cannot run, run the weak built-in layers with a
            loud warning instead of refusing (the result's ``error`` then names the problem).
        use_namespaces: In the weak layers, use the ``unshare`` wrapper when the machine has one;
            False runs with the rlimits, the dropped capabilities and the audit hook only.

    Returns:
        The result; a program's failure or a limit is reported in it, never raised.

    Raises:
        ValueError: If a limit is not positive (the message names it).
    """
    limits = _Limits(cpu_time_s, wall_time_s, memory_mb, max_processes, max_file_mb, max_output_chars)
    _check_limits(limits, disk_mb)
    if isolator:
        problem = isolation.isolator_problem()
        if problem is None:
            with _SLOTS:
                return _run_isolated(code, limits, allow_processes, disk_mb)
        if not allow_weak_sandbox:
            return _refused(f"{REFUSAL}: {problem}")
        _warn_weak(problem)
    elif not allow_weak_sandbox:
        raise ValueError("isolator=False runs the weak built-in layers and needs allow_weak_sandbox=True")
    wrapper = namespace_wrapper() if use_namespaces else ()
    with _SLOTS:
        workdir = _make_workdir(code)
        try:
            return _supervise(workdir, limits, allow_processes, wrapper)
        finally:
            _remove_tree(workdir)


REFUSAL = (
    "refused: the sandbox's isolator cannot run on this machine (set allow_weak_sandbox to run weaker layers)"
)
"""The start of the error of a call refused because the isolator cannot run (fail closed)."""


def _refused(error: str) -> SandboxResult:
    return SandboxResult(False, "", "", None, None, error, False, 0.0, None)


@functools.cache
def _warn_weak(problem: str) -> None:
    """Warns once per process and problem that code runs without the isolator."""
    warnings.warn(
        f"UNTRUSTED CODE RUNS WITHOUT THE ISOLATOR ({problem}): allow_weak_sandbox is set, so the "
        "weak built-in layers (namespaces where unshare works, rlimits, an audit hook) are all that "
        "contains it; see docs/sandbox.md",
        RuntimeWarning,
        stacklevel=3,
    )


def _run_isolated(code: str, limits: _Limits, allow_processes: bool, disk_mb: int) -> SandboxResult:
    """Runs ``code`` under the isolator; nothing is written to the host's file system."""
    code_fd = isolation.data_fd(code.encode("utf-8", errors="surrogatepass"))
    try:
        seccomp_fd = isolation.data_fd(isolation.seccomp_filter())
    except BaseException:
        os.close(code_fd)
        raise
    cgroup = userns = None
    try:
        if isolation.cgroups_available():  # tasks and memory of the whole call: what rlimits cannot bound
            memory = (limits.memory_mb + disk_mb + _CGROUP_SLACK_MB) << 20
            cgroup = isolation.make_cgroup(limits.max_processes + 2, memory)  # + bwrap and the supervisor
        userns = isolation.sandbox_userns()  # per call: its own task count under RLIMIT_NPROC
        prefix = cgroup.command() if cgroup else []
        bwrap = isolation.bwrap_argv(code_fd, seccomp_fd, disk_mb, userns)
        wrapper = (*prefix, *bwrap, isolation.interpreter())
        fds = (code_fd, seccomp_fd, *([userns] if userns is not None else []))
        drop = seccomp_fd if userns is not None else None  # the supervisor installs the policy
        return _supervise(
            isolation.WORKDIR, limits, allow_processes, wrapper, fds=fds, isolated=True, drop=drop
        )
    finally:
        for fd in (code_fd, seccomp_fd, userns):
            if fd is not None:
                os.close(fd)
        if cgroup is not None:
            cgroup.remove()


_PROBE_LOCK = threading.Lock()


def namespace_wrapper() -> tuple[str, ...]:
    """The ``unshare`` command prefix this machine supports, probed once per process.

    Runs a real sandboxed program under each of :data:`NAMESPACE_FLAGS` in order (so the read-only
    mounts and the dropped capabilities are tested too) and keeps the first that works. Without
    ``unshare``, or when none works (e.g. in a container without the capabilities), returns ``()``
    and the sandbox relies on the rlimits, the dropped capabilities and the audit hook.
    """
    with _PROBE_LOCK:
        return _probe_wrappers()


@functools.cache
def _probe_wrappers() -> tuple[str, ...]:
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    for flags in NAMESPACE_FLAGS:
        wrapper = (unshare, *flags)
        workdir = _make_workdir("print('ok')")
        try:
            result = _supervise(workdir, _PROBE_LIMITS, False, wrapper)
        except OSError:
            continue
        finally:
            _remove_tree(workdir)
        if result.ok and result.stdout == "ok\n":
            return wrapper
    return ()


def _check_limits(limits: _Limits, disk_mb: int) -> None:
    """Every limit, and the isolator's ``disk_mb``, is a positive number; sizes and counts are ints."""
    values = {**vars(limits), "disk_mb": disk_mb}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{key} must be a positive number, got {value!r}")
    for key in ("memory_mb", "max_processes", "max_file_mb", "max_output_chars", "disk_mb"):
        if not isinstance(values[key], int):
            raise ValueError(f"{key} must be an int, got {values[key]!r}")


def _make_workdir(code: str) -> str:
    """A fresh 0700 directory in the system temp dir holding ``main.py``; its real path."""
    workdir = os.path.realpath(tempfile.mkdtemp(prefix="actorlearner-sandbox-"))
    with open(os.path.join(workdir, "main.py"), "w", encoding="utf-8", errors="surrogatepass") as f:
        f.write(code)
    return workdir


def _remove_tree(workdir: str) -> None:
    """Deletes the weak layers' working directory; iterative, and never raises.

    Directories get ``u+rwx`` back first (a program may ``chmod 0500 .``), and a deep chain of
    directories cannot exhaust the recursion limit. The isolator has no host working directory.
    """
    stack, done = [workdir], []
    while stack:
        path = stack.pop()
        with contextlib.suppress(OSError):
            os.chmod(path, 0o700)
        done.append(path)
        try:
            with os.scandir(path) as entries:
                for entry in list(entries):
                    with contextlib.suppress(OSError):
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        else:
                            os.unlink(entry.path)
        except OSError:
            continue
    for path in reversed(done):  # children before their parents
        with contextlib.suppress(OSError):
            os.rmdir(path)


def _supervise(
    workdir: str,
    limits: _Limits,
    allow_processes: bool,
    wrapper: tuple[str, ...],
    fds: tuple[int, ...] = (),
    isolated: bool = False,
    drop: int | None = None,
) -> SandboxResult:
    """Starts the sandbox, collects its output and status, stops it and reaps everything.

    ``wrapper`` is the command prefix: ``unshare`` and its flags, or (``isolated``) the isolator's
    ``bwrap`` command and interpreter; ``workdir`` is the program's working directory as the
    sandbox sees it; ``fds`` are more descriptors the wrapper reads; ``drop``, the fd of the
    seccomp policy, has the supervisor start as root of the sandbox's user namespace, make the
    working directory ``noexec``, drop to the sandbox's uid and install the policy first.
    """
    status_r, status_w = os.pipe()  # the supervisor's report channel
    stop_r, stop_w = os.pipe()  # closing stop_w asks the supervisor to end the program
    mounts = "--mount" in wrapper or "--mount-proc" in wrapper
    mode = f"drop:{drop}" if drop is not None else str(int(mounts))
    args = [str(status_w), str(stop_r), workdir, str(int(allow_processes)), mode]
    args += [str(v) for v in vars(limits).values()]
    start = time.monotonic()
    python = () if isolated else (sys.executable,)
    try:
        proc = subprocess.Popen(
            [*wrapper, *python, "-I", "-S", "-B", "-c", _BOOTSTRAP_STUB, _bootstrap_code(), *args],
            cwd="/" if isolated else workdir,
            env=_scrubbed_env(workdir),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(status_w, stop_r, *fds),
            start_new_session=True,
        )
    except BaseException:
        os.close(status_r)
        os.close(stop_w)
        raise
    finally:
        os.close(status_w)
        os.close(stop_r)
    with os.fdopen(status_r, "rb") as status_pipe, proc:
        try:
            out, err, raw_status, stop = _collect(proc, status_pipe.fileno(), start, limits)
        finally:
            os.close(stop_w)
            _end(proc, isolated or "--pid" in wrapper, workdir)
    status = _parse_status(raw_status)
    file_at_limit = (
        status is not None
        and status.exit_code == 1
        and status.file_at_limit
        and "[Errno 27]" in _last_line(err)  # EFBIG (Python ignores SIGXFSZ)
    )
    error = _diagnose(status, stop, err, limits, file_at_limit)
    return SandboxResult(
        ok=error is None,
        stdout=out.decode("utf-8", errors="replace"),
        stderr=err.decode("utf-8", errors="replace"),
        exit_code=status.exit_code if status else None,
        signal=_signal_name(status.signal) if status and status.signal else None,
        error=error,
        truncated=stop == "output",
        wall_time_s=time.monotonic() - start,
        cpu_time_s=status.cpu_time_s if status else None,
    )


def _collect(
    proc: subprocess.Popen[bytes], status_fd: int, start: float, limits: _Limits
) -> tuple[bytes, bytes, bytes, str | None]:
    """Reads stdout, stderr and the status pipe until they close, the wall time or the output cap.

    Returns:
        stdout, stderr, the supervisor's status report, and why reading stopped early (``"wall"``,
        ``"output"``) or None.
    """
    assert proc.stdout is not None and proc.stderr is not None
    out, err, status = bytearray(), bytearray(), bytearray()
    buffers = {proc.stdout.fileno(): out, proc.stderr.fileno(): err, status_fd: status}
    stop = _pump(buffers, status_fd, start + limits.wall_time_s, limits.max_output_chars)
    return bytes(out), bytes(err), bytes(status), stop


def _pump(buffers: dict[int, bytearray], status_fd: int, deadline: float, cap: int) -> str | None:
    """Reads the pipes into ``buffers`` (at most ``cap`` bytes each, the status ``_STATUS_CAP``).

    Once the supervisor closed the status pipe, the output pipes get :data:`_GRACE_S` more seconds
    (a process that left the sandbox may hold them open).

    Returns:
        ``"wall"`` at the deadline while the supervisor still runs, ``"output"`` when a pipe
        exceeded ``cap``, else None.
    """
    with selectors.DefaultSelector() as selector:
        for fd in buffers:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "wall" if status_fd in selector.get_map() else None
            for key, _ in selector.select(remaining):
                chunk = os.read(key.fd, _CHUNK)
                if not chunk:
                    selector.unregister(key.fd)
                    if key.fd == status_fd:
                        deadline = min(deadline, time.monotonic() + _GRACE_S)
                    continue
                buffer = buffers[key.fd]
                buffer += chunk
                if key.fd == status_fd:
                    del buffer[_STATUS_CAP:]
                elif len(buffer) > cap:
                    del buffer[cap:]
                    _drop_partial_character(buffer)
                    return "output"
    return None


def _drop_partial_character(data: bytearray) -> None:
    """Removes an incomplete UTF-8 sequence at the end of ``data`` (left by a cut at a byte count)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # a continuation byte: look further back for the lead byte
            continue
        length = 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4 if byte >> 3 == 0b11110 else 1
        if length > back:
            del data[-back:]
        return


def _end(proc: subprocess.Popen[bytes], pidns: bool, workdir: str) -> None:
    """Once the stop pipe is closed: lets the sandbox end by itself, kills what is left, reaps it.

    The supervisor kills the program and reaps it, and every process below it (as PID 1 of the PID
    namespace or as a subreaper); ``unshare`` reaps the supervisor. Killing the group first would
    orphan the supervisor, and a caller that is a subreaper or PID 1 would keep it as a zombie.
    """
    _wait_exit(proc.pid, _STOP_TIMEOUT_S)
    _kill_group(proc.pid)  # a backstop; the leader is not reaped yet, so the group id is still ours
    proc.wait()
    if not pidns:  # no namespace teardown: find what left the group and the supervisor
        _kill_strays(workdir)


def _wait_exit(pid: int, timeout_s: float) -> bool:
    """Waits until the child ``pid`` has exited, without reaping it; False after ``timeout_s``."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # kernels before 5.3: poll
        deadline = time.monotonic() + timeout_s
        while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True
    try:
        return bool(select.select([pidfd], [], [], timeout_s)[0])
    finally:
        os.close(pidfd)


def _kill_group(pgid: int) -> None:
    """SIGKILLs every process of the group (a no-op when all have exited)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _kill_strays(workdir: str, rounds: int = 10) -> None:
    """SIGKILLs processes whose working directory is still ``workdir`` (they left the process group).

    Repeats until a scan of ``/proc`` finds none (or ``rounds`` scans), so children forked during a
    scan are caught by the next one.
    """
    for _ in range(rounds):
        strays = [pid for pid in _pids() if _cwd(pid) in (workdir, workdir + " (deleted)")]
        if not strays:
            return
        for pid in strays:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def _parse_status(raw: bytes) -> _Status | None:
    """Reads ``b"exit 1 0.012 1"`` or ``b"signal 24 2.001 0"``; None when the supervisor did not report.

    The last field is 1 when a file in the working directory reached the file size limit.
    """
    try:
        kind, number, cpu, big = raw.decode().split()
        value = int(number)
        exit_code, signal_number = (value, None) if kind == "exit" else (None, value)
        return _Status(exit_code, signal_number, float(cpu), big == "1")
    except ValueError:
        return None


def _diagnose(
    status: _Status | None, stop: str | None, stderr: bytes, limits: _Limits, file_at_limit: bool
) -> str | None:
    """The ``error`` of a run: which limit was hit or how the program failed; None when it succeeded.

    A limit is named only on evidence the program cannot fake by printing: the CPU limit when the
    measured CPU time reached it, the file size limit when a file in the working directory reached
    it. The memory limit is named for a bare ``MemoryError`` that ended the program (exit code 1).
    """
    if stop == "wall":
        return f"wall time limit ({limits.wall_time_s:g} s) exceeded"
    if stop == "output":
        return f"output limit ({limits.max_output_chars} bytes) exceeded; output truncated"
    last = _last_line(stderr)
    if status is None:
        return "the sandbox failed" + (f": {last}" if last else "")
    if status.signal is not None:
        soft = math.ceil(limits.cpu_time_s)  # RLIMIT_CPU counts whole seconds
        at_soft = status.signal == signal.SIGXCPU and status.cpu_time_s >= soft * _CPU_MEASURED_FRACTION
        at_hard = status.signal == signal.SIGKILL and status.cpu_time_s >= (soft + 1) * _CPU_MEASURED_FRACTION
        if at_soft or at_hard:
            return f"CPU time limit ({limits.cpu_time_s:g} s) exceeded"
        return f"killed by signal {_signal_name(status.signal)}"
    if status.exit_code == 1 and last == "MemoryError":
        return f"memory limit ({limits.memory_mb} MB) exceeded"
    if status.exit_code == 1 and file_at_limit:
        return f"file size limit ({limits.max_file_mb} MB) exceeded"
    if status.exit_code:
        return f"exit code {status.exit_code}"
    return None


def _last_line(data: bytes) -> str:
    lines = data.decode("utf-8", errors="replace").strip().splitlines()
    return lines[-1] if lines else ""


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _scrubbed_env(workdir: str) -> dict[str, str]:
    """The sandbox's whole environment: nothing of the caller's is passed on."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": workdir,
        "TMPDIR": workdir,
    }


_BOOTSTRAP_STUB = "import marshal, sys; exec(marshal.loads(bytes.fromhex(sys.argv.pop(1))))"
"""The ``-c`` program of the sandboxed interpreter: runs the code object passed as its first argument."""


@functools.cache
def _bootstrap_source() -> str:
    """The sandboxed interpreter's program: the functions below, then the entry call."""
    body = "\n\n".join(inspect.getsource(fn) for fn in _SANDBOX_FUNCTIONS)
    return f"from __future__ import annotations\nimport sys\n\n{body}\n_sandbox_main(sys.argv[1:])\n"


@functools.cache
def _bootstrap_code() -> str:
    """:func:`_bootstrap_source` compiled and marshalled, in hex (saves compiling it at every call).

    The sandbox runs the same interpreter (``sys.executable``), so the marshal format matches.
    """
    code = marshal.dumps(compile(_bootstrap_source(), "<string>", "exec", optimize=2))
    if len(code) > 60_000:  # Linux caps one argument at 128 KiB (MAX_ARG_STRLEN)
        raise RuntimeError(f"the sandbox's bootstrap is too large to pass as an argument ({len(code)} bytes)")
    return code.hex()


# ---- what runs inside the sandbox (standard library only; source sent with -c) --------------------


def _sandbox_main(argv: list[str]) -> None:
    """The sandbox's supervisor: hardens itself, forks the program, waits for it and reports.

    Args:
        argv: The status pipe's fd, the stop pipe's fd, the working directory, ``"1"`` to allow
            processes, ``"1"`` to lock the mounts (``"drop:FD"``: start as root of the isolator's
            user namespace, see :func:`_harden`), then the limits in :class:`_Limits` order.
    """
    import os
    import signal
    import sys

    status_fd, stop_fd, workdir = int(argv[0]), int(argv[1]), argv[2]
    allow_processes, mounts, limits = argv[3] == "1", argv[4] == "1", argv[5:]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # PID 1: a handled signal would reach it from inside
    try:
        policy_fd = int(argv[4][5:]) if argv[4].startswith("drop:") else None
        _harden(workdir, mounts, allow_processes, policy_fd)
    except Exception as err:  # fail closed: the program never runs without its protections
        os.write(2, f"sandbox setup failed: {type(err).__name__}: {err}\n".encode())
        os._exit(70)
    pid = os.fork()
    if pid == 0:
        os.close(status_fd)  # the program never holds the report channel
        os.close(stop_fd)
        _run_program(workdir, allow_processes, limits)
        sys.exit(0)
    exit_code, signal_number, cpu = _wait_program(pid, stop_fd, float(limits[1]) + 1.0)
    kind, number = ("signal", signal_number) if signal_number else ("exit", exit_code)
    big = exit_code == 1 and _has_file_of_size(workdir, int(limits[4]) << 20)
    try:  # noqa: SIM105  (no contextlib in the sandbox: it starts faster)
        os.write(status_fd, f"{kind} {number} {cpu:.6f} {int(big)}".encode())
    except OSError:
        pass
    os.close(status_fd)
    if os.getpid() != 1:  # PID 1 of a namespace takes every process with it when it exits
        _kill_descendants()
    os._exit(128 + signal_number if signal_number else exit_code)


def _harden(workdir: str, mounts: bool, allow_processes: bool, policy_fd: int | None = None) -> None:
    """In the supervisor, before the program exists: read-only mounts, subreaper, no capabilities.

    With ``policy_fd`` (the isolator, for a root trainer, which starts as root of its user
    namespace): first remounts the working directory ``noexec,nosuid,nodev``, empties the bounding
    set, hands the directory to uid 65534 and becomes it (which clears every capability); last,
    installs the seccomp policy read from ``policy_fd``.

    Raises:
        OSError: If a step fails (the caller then runs no program).
    """
    import os
    import sys

    try:
        import ctypes
    except ImportError:  # an interpreter without ctypes: no OS-level hardening beyond namespaces
        if mounts or policy_fd is not None:
            raise
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]

    def check(result: int, what: str) -> None:
        if result != 0:
            number = ctypes.get_errno()
            raise OSError(number, f"{what}: {os.strerror(number)}")

    if mounts:
        _lock_mounts(libc.mount, check, workdir, allow_processes)
    if policy_fd is not None:
        flags = 32 | 4096 | 8 | 2 | 4  # MS_REMOUNT | MS_BIND | MS_NOEXEC | MS_NOSUID | MS_NODEV
        check(libc.mount(None, workdir.encode(), None, flags, None), f"remount {workdir} noexec")
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last_cap = int(f.read())
        for cap in range(last_cap + 1):
            check(libc.prctl(24, cap, 0, 0, 0), "PR_CAPBSET_DROP")
        for path in (os.path.join(workdir, "main.py"), workdir):  # the directory last: 0700
            os.chown(path, 65534, 65534)
        os.setgroups([])
        os.setresgid(65534, 65534, 65534)
        os.setresuid(65534, 65534, 65534)
    os.chdir(workdir)  # onto the working directory's own mount
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans of the program come back to us
    check(libc.prctl(38, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")
    with open("/proc/self/status") as f:
        caps = {k: int(v, 16) for k, v in (line.split(":") for line in f if line.startswith("Cap"))}
    if caps["CapEff"] & (1 << 8):  # CAP_SETPCAP: empty the bounding set, so exec regains nothing
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last_cap = int(f.read())
        for cap in range(last_cap + 1):
            check(libc.prctl(24, cap, 0, 0, 0), "PR_CAPBSET_DROP")
    libc.prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL
    if caps["CapPrm"] or caps["CapEff"] or caps["CapInh"]:
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
        check(libc.capset(header, (ctypes.c_uint32 * 6)()), "capset")
    check(libc.prctl(4, 0, 0, 0, 0), "PR_SET_DUMPABLE")  # /proc/<supervisor> closed to the program
    if policy_fd is not None:  # last: the policy denies the remount above
        with os.fdopen(policy_fd, "rb") as policy:
            filters = ctypes.create_string_buffer(policy.read())
        length = (len(filters.raw) - 1) // 8  # sock_filter entries (the buffer adds a NUL byte)
        fprog = length.to_bytes(8, sys.byteorder) + ctypes.addressof(filters).to_bytes(8, sys.byteorder)
        sock_fprog = ctypes.create_string_buffer(fprog)  # {u16 len; padding; sock_filter *filter}
        check(libc.prctl(22, 2, ctypes.addressof(sock_fprog), 0, 0), "PR_SET_SECCOMP")  # MODE_FILTER


def _lock_mounts(mount: Any, check: Any, workdir: str, allow_processes: bool) -> None:
    """In a new mount namespace: hides private directories and makes every mount but the workdir read-only.

    ``mount`` is libc's ``mount(2)``; ``check(result, what)`` raises ``OSError`` on failure.
    """
    import os
    import sys

    ms_rdonly, ms_nosuid, ms_nodev, ms_noexec, ms_bind, ms_rec, ms_private = 1, 2, 4, 8, 4096, 16384, 1 << 18

    def do(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
        encode = os.fsencode
        result = mount(
            source and encode(source), encode(target), fstype and encode(fstype), flags, data and encode(data)
        )
        check(result, f"mount {target}")

    do(None, "/", None, ms_rec | ms_private)
    paths = {workdir, sys.base_prefix, sys.prefix, os.path.dirname(sys.executable), *sys.path}
    paths.add(os.path.dirname(os.path.realpath(sys.executable)))
    real = {os.path.realpath(p) for p in paths if p and os.path.exists(p)}
    keep = [p for p in real if not any(p.startswith(q.rstrip("/") + "/") for q in real if q != p)]
    devices = [f"/dev/{name}" for name in ("null", "zero", "full", "random", "urandom")]
    masked = {
        "/dev": [*(d for d in devices if os.path.exists(d)), *(p for p in keep if p.startswith("/dev/"))]
    }
    for directory in ("/tmp", "/var/tmp", "/run", "/root", "/home"):
        covered = any(directory == p or directory.startswith(p.rstrip("/") + "/") for p in keep)
        if not covered and os.path.isdir(directory) and os.path.realpath(directory) == directory:
            masked[directory] = [p for p in keep if p.startswith(directory + "/")]
    for directory, kept in masked.items():
        _mask(do, directory, kept, ms_bind | ms_rec, ms_nosuid | ms_nodev | ms_noexec)
    if not any(workdir.startswith(d + "/") for d in masked):
        do(workdir, workdir, None, ms_bind)  # its own mount, left writable
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "fd/0"), ("stdout", "fd/1"), ("stderr", "fd/2")):
        os.symlink(target, f"/dev/{name}")
    os.makedirs("/dev/shm", exist_ok=True)
    writable = {workdir}
    if allow_processes:  # POSIX semaphores of multiprocessing
        do("tmpfs", "/dev/shm", "tmpfs", ms_nosuid | ms_nodev | ms_noexec, "mode=1777,size=4m,nr_inodes=256")
        writable.add("/dev/shm")
    _remount_readonly(do, writable, ms_rdonly | ms_nosuid)


def _mask(do: Any, directory: str, kept: list[str], bind: int, tmpfs_flags: int) -> None:
    """Mounts an empty tmpfs over ``directory``, then binds each path of ``kept`` back in it."""
    import os

    fds = [(path, os.open(path, os.O_PATH | os.O_CLOEXEC)) for path in kept]
    do("tmpfs", directory, "tmpfs", tmpfs_flags, "mode=0755,size=64k,nr_inodes=1024")
    for path, fd in fds:
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            os.makedirs(path, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
        do(f"/proc/self/fd/{fd}", path, None, bind)
        os.close(fd)


def _remount_readonly(do: Any, writable: set[str], flags: int) -> None:
    """Remounts every visible mount read-only (keeping its locked flags), but those in ``writable``."""
    option_flags = {"nosuid": 2, "nodev": 4, "noexec": 8, "noatime": 1024, "nodiratime": 2048}
    option_flags |= {"relatime": 1 << 21, "strictatime": 1 << 24}
    with open("/proc/self/mountinfo", "rb") as f:
        entries = [(_unescape(fields[4]), fields[5].decode()) for fields in (line.split() for line in f)]
    later: set[str] = set()  # mount points mounted after the entry (mountinfo lists in mount order)
    for point, options in reversed(entries):
        covering = {point, *(point[:i] or "/" for i, c in enumerate(point) if c == "/")}
        hidden = not later.isdisjoint(covering)  # under a later mount at the same place or above
        later.add(point)
        if point in writable or hidden:
            continue
        extra = sum(option_flags.get(option, 0) for option in options.split(","))
        do(None, point, None, 32 | 4096 | flags | extra)  # MS_REMOUNT | MS_BIND


def _unescape(raw: bytes) -> str:
    """A path of ``/proc/self/mountinfo`` (a space is written as backslash 040) as a str."""
    import os

    out, i = bytearray(), 0
    while i < len(raw):
        if raw[i] == 0x5C and raw[i + 1 : i + 4].isdigit():
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return os.fsdecode(bytes(out))


def _wait_program(pid: int, stop_fd: int, timeout_s: float) -> tuple[int, int, float]:
    """Waits for the program; SIGKILLs it when the stop pipe closes or after ``timeout_s``.

    The stop pipe closes when the parent asks to stop the run, or when the parent died.

    Returns:
        Exit code (0 when signalled), signal number (0 when it exited) and CPU seconds used.
    """
    import os
    import select
    import time

    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # kernels before 5.3: poll
        deadline = time.monotonic() + timeout_s
        while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            if select.select([stop_fd], [], [], 0.01)[0] or time.monotonic() > deadline:
                os.kill(pid, 9)
                break
    else:
        if pidfd not in select.select([pidfd, stop_fd], [], [], timeout_s)[0]:
            os.kill(pid, 9)
        os.close(pidfd)
    _, status, usage = os.wait4(pid, 0)
    cpu = usage.ru_utime + usage.ru_stime
    if os.WIFSIGNALED(status):
        return 0, os.WTERMSIG(status), cpu
    return os.WEXITSTATUS(status), 0, cpu


def _has_file_of_size(workdir: str, size: int, max_entries: int = 10_000) -> bool:
    """Whether a file under ``workdir`` has at least ``size`` bytes (the first ``max_entries`` looked at).

    Iterative: a program's deep directory chain cannot exhaust the recursion limit.
    """
    import os

    stack, seen = [workdir], 0
    while stack and seen < max_entries:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            seen += 1
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif (
                    entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_size >= size
                ):
                    return True
            except OSError:
                pass
    return False


def _kill_descendants() -> None:
    """SIGKILLs and reaps every process left below the supervisor (a subreaper: orphans come back)."""
    import os
    import time

    for _ in range(10_000):
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:  # none left
            return
        if pid:
            continue
        for child in _children(os.getpid()):
            try:  # noqa: SIM105
                os.kill(child, 9)
            except OSError:
                pass
        time.sleep(0.001)


def _children(parent: int) -> list[int]:
    """Pids of the live and zombie children of ``parent``."""
    import os

    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    if int(f.read().rsplit(b")", 1)[1].split()[1]) == parent:
                        found.append(int(name))
            except (OSError, ValueError, IndexError):
                pass
    return found


def _run_program(workdir: str, allow_processes: bool, limits: list[str]) -> None:
    """In the program's process: sets the rlimits and the audit hook, then runs ``main.py``.

    An exception of the program is printed as a traceback without the sandbox's frames and exits
    with status 1; ``SystemExit`` propagates as it would in ``python main.py``.
    """
    import builtins
    import linecache
    import math
    import os
    import resource
    import signal
    import sys
    import traceback

    signal.signal(signal.SIGINT, signal.default_int_handler)  # the supervisor ignores it
    cpu, _, memory_mb, processes, file_mb = (float(v) for v in limits[:5])
    for kind, soft, hard in (
        (resource.RLIMIT_CPU, math.ceil(cpu), math.ceil(cpu) + 1),  # SIGXCPU, then SIGKILL
        (resource.RLIMIT_AS, int(memory_mb) << 20, int(memory_mb) << 20),
        (resource.RLIMIT_NPROC, int(processes), int(processes)),
        (resource.RLIMIT_FSIZE, int(file_mb) << 20, int(file_mb) << 20),
        (resource.RLIMIT_NOFILE, 256, 256),
        (resource.RLIMIT_CORE, 0, 0),
    ):
        resource.setrlimit(kind, (soft, hard))
    os.environ.pop("PWD", None)  # set by bwrap's --chdir; the program's environment is the scrubbed one
    sys.stdout.reconfigure(line_buffering=True, errors="backslashreplace")  # type: ignore[union-attr]
    sys.stderr.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    with open(os.path.join(workdir, "main.py"), encoding="utf-8", errors="surrogateescape") as f:
        source = f.read()
    linecache.cache["<code>"] = (len(source), None, source.splitlines(True), "<code>")
    _strip_modules()
    main = type(sys)("__main__")  # the program's own, so the sandbox's functions are not in sight
    main.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = main
    _install_guard(workdir, allow_processes)
    try:
        exec(compile(source, "<code>", "exec"), main.__dict__)
    except SystemExit:
        raise
    except BaseException as err:
        report = traceback.TracebackException(type(err), err, err.__traceback__, compact=True)
        frames = [f for f in report.stack if f.filename != "<string>"]  # the sandbox's own frames
        report.stack = traceback.StackSummary.from_list(frames)
        sys.stderr.write("".join(report.format()))
        sys.exit(1)


def _strip_modules() -> None:
    """Removes from the program's modules what acts without an audit event, and ``ctypes``."""
    import _imp
    import os
    import sys

    for name in [n for n in sys.modules if n in ("ctypes", "_ctypes") or n.startswith("ctypes.")]:
        del sys.modules[name]  # the supervisor's: a fresh import is audited
    for name in sys.builtin_module_names:  # loaded now, as _imp.create_builtin goes below
        if name not in sys.modules:
            try:  # noqa: SIM105
                __import__(name)
            except ImportError:
                pass
    unaudited: tuple[str, ...] = ("mkfifo", "mknod", "pidfd_open", "pidfd_send_signal", "setpriority")
    unaudited += ("sched_setaffinity", "sched_setparam", "sched_setscheduler")
    for module in (os, sys.modules["posix"], sys.modules["_signal"], sys.modules.get("signal")):
        for name in unaudited:
            if hasattr(module, name):
                delattr(module, name)
    del _imp.create_builtin  # it makes a fresh copy of a built-in module (posix, _signal) unaudited


def _install_guard(workdir: str, allow_processes: bool) -> None:
    """Installs the audit hook that denies what the sandbox forbids (see the module docstring).

    The hook and its helpers get all they use as default arguments bound here, before the program
    runs: built-in functions, strings, tuples and frozensets. They look up no global, builtin or
    module attribute when called, have no closure and call no code of the program (a path argument
    that is not a str, bytes or int is refused), so the program cannot change what they decide by
    monkeypatching modules or builtins, or through the frames and functions it may reach.
    """
    import os
    import sys

    denied: tuple[str, ...] = (
        *("socket.", "ctypes.", "syslog.", "os.kill", "signal.pthread_kill", "os.chdir", "os.symlink"),
        *("resource.setrlimit", "resource.prlimit", "gc.get_", "sys.settrace", "sys.setprofile"),
        *("sys.monitoring", "cpython.PyInterpreterState_New", "os.chroot", "sys._current_frames"),
    )
    blocked = {"ctypes", "_ctypes", "_xxsubinterpreters", "_xxinterpchannels", "_xxtestfuzz", "_tkinter"}
    blocked |= {"_dbm", "_gdbm", "_sqlite3", "_posixshmem", "readline", "posix", "_signal", "_imp"}
    if not allow_processes:
        denied += ("os.fork", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "subprocess.Popen")
        blocked |= {"subprocess", "_posixsubprocess", "_multiprocessing"}
    changes = {"os.remove", "os.rmdir", "os.mkdir", "os.truncate", "os.chmod", "os.chown", "os.utime"}
    changes |= {"os.chflags", "os.lchflags", "os.setxattr", "os.removexattr", "os.rename", "os.link"}
    devices = ("/dev/null", "/dev/zero", "/dev/full", "/dev/urandom", "/dev/random")
    read_roots = tuple(os.path.realpath(p) for p in sys.path if os.path.isdir(p))  # the standard library
    rules = (
        frozenset({workdir, *devices}),  # writable
        workdir + "/",
        frozenset({workdir, *devices, *read_roots}),  # readable
        tuple(root + "/" for root in (workdir, *read_roots)),
    )
    resolve, fd_path = _path_resolvers()
    guard = _make_guard(denied, frozenset(blocked), frozenset(changes), rules, resolve, fd_path, globals())
    sys.addaudithook(guard)


# _path_resolvers and _make_guard are the audit hook and the helpers it calls; they are left long on
# purpose (the ~60-line rule does not apply). Every function the hook calls must get all it uses as
# default arguments bound here and be covered by the hook's own `__globals__ is _boot` check, so that
# the program cannot swap what it decides. Splitting `guard` per event would add more such functions
# and more calls on the path of every audited event, and spread that invariant over code that must
# be audited as one piece; kept whole, one read of each function shows it holds.
def _path_resolvers() -> tuple[Any, Any]:
    """``resolve(path)``: the real path of a str or bytes path; ``fd_path(fd)``: the file an fd is."""
    import posix

    def resolve(
        path: Any,
        _type: Any = type,
        _str: Any = str,
        _bytes: Any = bytes,
        _decode: Any = bytes.decode,
        _lstat: Any = posix.lstat,
        _readlink: Any = posix.readlink,
        _getcwd: Any = posix.getcwd,
        _errors: Any = (OSError, ValueError),
        _error: Any = PermissionError,
    ) -> str:
        """Like ``os.path.realpath``: symlinks followed, missing components taken as they are."""
        if _type(path) is _bytes:
            path = _decode(path, "utf-8", "surrogateescape")
        elif _type(path) is not _str:
            raise _error("sandbox: a path must be a str, bytes or int here")
        if not path.startswith("/"):
            path = _getcwd() + "/" + path
        parts = path.split("/")
        parts.reverse()
        real, links = "", 0
        while parts:
            name = parts.pop()
            if name == "" or name == ".":
                continue
            if name == "..":
                real = real[: real.rfind("/")] if real else ""
                continue
            candidate = real + "/" + name
            try:
                mode = _lstat(candidate).st_mode
            except _errors:
                mode = 0
            if mode & 0o170000 != 0o120000:  # not a symlink (or missing)
                real = candidate
                continue
            links += 1
            if links > 40:
                raise _error("sandbox: too many levels of symbolic links in " + path)
            target = _readlink(candidate)
            if target.startswith("/"):
                real = ""
            more = target.split("/")
            more.reverse()
            parts += more
        return real or "/"

    def fd_path(fd: Any, _str: Any = str, _readlink: Any = posix.readlink, _errors: Any = (OSError,)) -> Any:
        """The path of the file ``fd`` is open on; None for a pipe, socket or closed descriptor."""
        try:
            target = _readlink("/proc/self/fd/" + _str(fd))
        except _errors:
            return None
        return target if target.startswith("/") else None

    return resolve, fd_path


def _make_guard(
    denied: tuple[str, ...],
    blocked: frozenset[str],
    changes: frozenset[str],
    rules: tuple[Any, ...],
    resolve: Any,
    fd_path: Any,
    boot: dict[str, Any],
) -> Any:
    """The audit hook; see :func:`_install_guard` for how it resists the program."""
    import posix

    wflags = posix.O_WRONLY | posix.O_RDWR | posix.O_APPEND | posix.O_CREAT | posix.O_TRUNC
    function, writable, write_prefix, readable, read_prefixes = type(resolve), *rules

    def allowed(
        real: str,
        write: Any,
        _writable: Any = writable,
        _write_prefix: Any = write_prefix,
        _readable: Any = readable,
        _read_prefixes: Any = read_prefixes,
    ) -> bool:
        if write:
            return real in _writable or real.startswith(_write_prefix)
        return real in _readable or real.startswith(_read_prefixes)

    def guard(
        event: str,
        args: Any,
        _denied: Any = denied,
        _blocked: Any = blocked,
        _changes: Any = changes,
        _two: Any = (0, 1),
        _one: Any = (0,),
        _resolve: Any = resolve,
        _fd_path: Any = fd_path,
        _allowed: Any = allowed,
        _type: Any = type,
        _int: Any = int,
        _str: Any = str,
        _function: Any = function,
        _boot: Any = boot,
        _wflags: Any = wflags,
        _lstat: Any = posix.lstat,
        _write_prefix: Any = write_prefix,
        _workdir: Any = write_prefix[:-1],
        _errors: Any = (OSError, ValueError),
        _error: Any = PermissionError,
    ) -> None:
        if event.startswith(_denied):
            raise _error("sandbox: " + event + " is not allowed")
        if event == "open":
            path, mode, flags = args
            if _type(flags) is not _int or not (mode is None or _type(mode) is _str):
                raise _error("sandbox: unexpected arguments of open")
            if _type(path) is _int:  # wraps a descriptor already open
                return
            write = flags & _wflags or (
                mode is not None and ("w" in mode or "a" in mode or "x" in mode or "+" in mode)
            )
            real = _resolve(path)
            if not _allowed(real, write):
                what = "writing" if write else "reading"
                raise _error(f"sandbox: {what} {real} is not allowed (outside the working directory)")
            if real != _workdir and not real.startswith(_write_prefix):
                try:
                    is_dir = _lstat(real).st_mode & 0o170000 == 0o040000
                except _errors:
                    is_dir = False
                if is_dir:  # an outside directory's fd would let dir_fd= paths escape the checks
                    raise _error(f"sandbox: opening the directory {real} is not allowed")
        elif event in _changes:
            for i in _two if event == "os.rename" or event == "os.link" else _one:
                target = args[i]
                real = _fd_path(target) if _type(target) is _int else _resolve(target)
                if real is not None and not _allowed(real, True):
                    raise _error(f"sandbox: changing {real} is not allowed (outside the working directory)")
        elif event == "import":
            name, filename = args[0], args[1]
            if _type(name) is not _str:
                raise _error("sandbox: unexpected arguments of import")
            parts = name.split(".")
            if _type(filename) is _str:  # an extension module's file, e.g. _posixsubprocess.cpython-311-...so
                parts.append(filename.rpartition("/")[2].partition(".")[0])
            for part in parts:
                if part in _blocked or part.startswith("_test"):
                    raise _error("sandbox: importing " + name + " is not allowed")
        elif (event == "object.__setattr__" or event == "object.__delattr__") and (
            _type(args[0]) is _function and args[0].__globals__ is _boot
        ):
            raise _error("sandbox: changing the sandbox's functions is not allowed")

    return guard


_SANDBOX_FUNCTIONS = (
    _has_file_of_size,
    _sandbox_main,
    _harden,
    _lock_mounts,
    _mask,
    _remount_readonly,
    _unescape,
    _wait_program,
    _kill_descendants,
    _children,
    _run_program,
    _strip_modules,
    _install_guard,
    _path_resolvers,
    _make_guard,
)
