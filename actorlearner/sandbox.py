"""Running untrusted Python (a model's tool call) in a separate, limited, isolated interpreter.

:func:`run_python` writes the code to a fresh private working directory (mode 0700, deleted
afterwards) and runs it with the caller's interpreter as ``sys.executable -I -S -B`` (no
``PYTHON*`` variables or user site, no site-packages, so the standard library only, and no
bytecode writes) under these layers:

===============================  =======================================================================
Layer                            What it does
===============================  =======================================================================
Linux namespaces (``unshare``)   A new network namespace (only a loopback that is down: nothing to
                                 connect to), a new PID namespace with its own ``/proc`` (the
                                 program sees no process outside the sandbox; when the sandbox's
                                 first process exits the kernel kills every other one) and, where
                                 allowed, a user namespace (root inside has no capability on the
                                 host). The best combination the machine allows is probed once
                                 (:func:`namespace_wrapper`); none is used when ``unshare`` is
                                 missing or every combination fails.
rlimits                          CPU seconds (``RLIMIT_CPU``: ``SIGXCPU`` at the limit, ``SIGKILL``
                                 a second later), address space (``RLIMIT_AS``), processes
                                 (``RLIMIT_NPROC``), file size (``RLIMIT_FSIZE``), 256 open files,
                                 no core dumps. Set as hard limits by the program's process before
                                 the program runs, and the audit hook denies changing them.
Audit hook (PEP 578)             Installed before the program runs. Denies sockets (every
                                 ``socket.*`` event), new processes (fork, exec, spawn, system,
                                 subprocess), ``ctypes``, killing processes, changing rlimits,
                                 tracing, sub-interpreters; writing, creating, deleting, renaming
                                 or chmod-ing anything outside the working directory; reading
                                 files outside the working directory and the standard library
                                 (``/proc/<pid>/environ``, ``/etc``, the project's files...);
                                 opening directories outside the working directory, ``chdir`` and
                                 symlinks (each would let a checked path point elsewhere); and
                                 importing C modules that open files behind the hook's back
                                 (``sqlite3``, ``dbm``, shared memory); ``os.mkfifo`` and
                                 ``os.mknod``, which CPython does not audit, are deleted.
Parent-side supervision          Wall-time limit; stdout and stderr read incrementally, each capped
                                 (the program is killed when it writes more); on exit or timeout
                                 the whole process group is killed (and, without a PID namespace,
                                 every process still in the working directory). A trusted
                                 supervisor process in the sandbox waits for the program and
                                 reports its exit status and CPU time on a pipe the program never
                                 holds; it also kills the program a second after the wall time,
                                 should the parent die.
Scrubbed environment             Only ``PATH``, ``LANG``, ``LC_ALL``, ``HOME`` and ``TMPDIR`` (the
                                 last two are the working directory): the caller's environment
                                 variables, secrets included, are not inherited.
===============================  =======================================================================

What it does NOT protect against:

* It is not a security boundary against a determined attacker: the audit hook runs inside the
  attacked process and PEP 578 says hooks cannot sandbox Python (native code, interpreter
  internals or a race between threads can get around them), and nothing here stops kernel
  exploits. Run hostile code in a VM or a gVisor-like runtime; this sandbox contains the mistakes
  and reward hacks of a model.
* The program runs as the caller's user; a user namespace removes root's capabilities, not its
  ownership of root-owned files. Dropping to an unprivileged uid is not done because the
  interpreter may live in a private directory (e.g. ``/root/.pyenv``). So file writes outside the
  working directory are stopped by the audit hook alone: run the trainer as an unprivileged user
  if the host matters.
* Linux exempts uid 0 from ``RLIMIT_NPROC``, and counts a non-root user's processes and threads
  across the machine outside a user namespace. As root, a fork bomb that got past the audit hook
  is bounded by the wall time and the PID namespace's teardown, not by a count; a pids cgroup
  would bound it, and none is set up.
* File metadata outside the working directory (``os.stat``, ``os.listdir``) stays visible and the
  standard library stays readable. Disk use is bounded per file (``RLIMIT_FSIZE``), not in total:
  the working directory is in the system temp dir, not on a private tmpfs.
* By design these do not work inside: sockets, subprocesses (unless ``allow_processes``),
  ``os.chdir``, ``os.symlink``, third-party packages, and more than a few dozen threads (each
  reserves stack address space under ``RLIMIT_AS``).
* Without namespaces (no ``unshare``), only the audit hook keeps the program off the network, and
  a process that left both the process group and the working directory can outlive the call.

The functions ``_sandbox_main``, ``_run_program``, ``_install_guard`` and ``_wait_program`` run in
the sandboxed interpreter: their source is sent with ``-c``, so they use the standard library only
and import inside their bodies. Nothing in the parent changes global state (no signal handlers, no
``chdir``, no ``preexec_fn``, which is unsafe in a multi-threaded parent), so :func:`run_python` may
be called from many threads at once.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

NAMESPACE_FLAGS: tuple[tuple[str, ...], ...] = (
    ("--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child", "--mount-proc"),
    ("--net", "--pid", "--fork", "--kill-child", "--mount-proc"),
    ("--user", "--map-root-user", "--net"),
    ("--net",),
)
"""``unshare`` flag sets tried in order; the first that runs the interpreter is used."""

MAX_CONCURRENT_RUNS = 2 * (os.cpu_count() or 1)
"""Programs run at once per process; further calls wait for a slot (the wait is not wall time).

The env runner steps many episodes from a thread pool; without a cap, a hundred interpreters on
two cores would thrash and hit their wall-time limits for want of CPU."""
_SLOTS = threading.BoundedSemaphore(MAX_CONCURRENT_RUNS)

_GRACE_S = 0.5
"""How long to keep reading output after the sandbox's supervisor exited."""
_CHUNK = 65536


@dataclass(frozen=True)
class SandboxResult:
    """The outcome of :func:`run_python`.

    Attributes:
        ok: True when the program exited with status 0 and no limit was hit.
        stdout: What the program printed (at most ``max_output_chars``; UTF-8, invalid bytes
            replaced).
        stderr: What it wrote to stderr (tracebacks), with the same cap.
        exit_code: The program's exit status, or None when a signal or the sandbox ended it.
        signal: Name of the signal that killed the program (e.g. ``"SIGXCPU"``), or None.
        error: What went wrong, or None when ``ok``: a limit (``"wall time limit (5 s) exceeded"``,
            ``"CPU time limit (2 s) exceeded"``, ``"memory limit (256 MB) exceeded"``, ``"file size
            limit (16 MB) exceeded"``, ``"output limit (20000 characters) exceeded; output
            truncated"``), ``"exit code N"``, ``"killed by signal SIGSEGV"`` or a sandbox failure.
        truncated: Whether stdout or stderr was cut at ``max_output_chars``.
        wall_time_s: Seconds from start to the end of the call's process group.
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


@dataclass(frozen=True)
class _Status:
    """What the sandbox's supervisor reported: exit code or signal number, and CPU seconds."""

    exit_code: int | None
    signal: int | None
    cpu_time_s: float


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
    use_namespaces: bool = True,
) -> SandboxResult:
    """Runs ``code`` as a Python program in the sandbox (see the module docstring) and waits for it.

    Thread-safe; at most :data:`MAX_CONCURRENT_RUNS` programs run at once, further calls wait.

    Args:
        code: The program's source; it runs as ``__main__`` in a private working directory.
        cpu_time_s: CPU seconds before ``SIGXCPU`` (``RLIMIT_CPU``, whole seconds, rounded up).
        wall_time_s: Seconds before the whole process group is killed.
        memory_mb: Address-space limit of each process (``RLIMIT_AS``).
        max_processes: ``RLIMIT_NPROC``: processes and threads of the user (of the user namespace,
            when there is one); not enforced by Linux for root.
        max_file_mb: Largest file the program may write (``RLIMIT_FSIZE``).
        max_output_chars: Bytes kept of each of stdout and stderr; the program is killed when it
            writes more.
        allow_processes: Let the program fork and run subprocesses (still confined to the
            namespaces, the limits and the process group).
        use_namespaces: Use the ``unshare`` wrapper when the machine has one; False runs with the
            rlimits and the audit hook only (what a machine without ``unshare`` gets).

    Returns:
        The result; a program's failure or a limit is reported in it, never raised.

    Raises:
        ValueError: If a limit is not positive (the message names it).
    """
    limits = _Limits(cpu_time_s, wall_time_s, memory_mb, max_processes, max_file_mb, max_output_chars)
    _check_limits(limits)
    with _SLOTS:
        workdir = os.path.realpath(tempfile.mkdtemp(prefix="actorlearner-sandbox-"))
        try:
            with open(os.path.join(workdir, "main.py"), "w", encoding="utf-8", errors="surrogatepass") as f:
                f.write(code)
            return _supervise(workdir, limits, allow_processes, use_namespaces)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def _check_limits(limits: _Limits) -> None:
    for key, value in vars(limits).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{key} must be a positive number, got {value!r}")
    for key in ("memory_mb", "max_processes", "max_file_mb", "max_output_chars"):
        if not isinstance(getattr(limits, key), int):
            raise ValueError(f"{key} must be an int, got {getattr(limits, key)!r}")


def _supervise(workdir: str, limits: _Limits, allow_processes: bool, use_namespaces: bool) -> SandboxResult:
    """Starts the sandbox, collects its output and status, and kills its process group."""
    wrapper = namespace_wrapper() if use_namespaces else ()
    status_r, status_w = os.pipe()  # the supervisor's report channel
    args = [str(status_w), workdir, str(int(allow_processes)), *(str(v) for v in vars(limits).values())]
    start = time.monotonic()
    with os.fdopen(status_r, "rb") as status_pipe:
        try:
            proc = subprocess.Popen(
                [*wrapper, sys.executable, "-I", "-S", "-B", "-c", _bootstrap_source(), *args],
                cwd=workdir,
                env=_scrubbed_env(workdir),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(status_w,),
                start_new_session=True,
            )
        finally:
            os.close(status_w)
        with proc:
            try:
                out, err, raw_status, stop = _collect(proc, status_pipe.fileno(), start, limits)
            finally:
                _kill_group(proc.pid)  # the leader is not reaped yet, so its group id is still ours
                proc.wait()
                if "--pid" not in wrapper:  # no namespace teardown: find what left the group
                    _kill_strays(workdir)
    status = _parse_status(raw_status)
    error = _diagnose(status, stop, err, limits)
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
    """Reads the pipes into ``buffers`` (at most ``cap`` bytes each, but the status) until they close.

    Once the supervisor closed the status pipe, the output pipes get :data:`_GRACE_S` more seconds
    (a process that left the group may hold them open).

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
                if key.fd != status_fd and len(buffer) > cap:
                    del buffer[cap:]
                    return "output"
    return None


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
    """Reads ``b"exit 0 0.012"`` or ``b"signal 24 2.001"``; None when the supervisor did not report."""
    try:
        kind, number, cpu = raw.decode().split()
        value = int(number)
        return _Status(value if kind == "exit" else None, value if kind == "signal" else None, float(cpu))
    except ValueError:
        return None


def _diagnose(status: _Status | None, stop: str | None, stderr: bytes, limits: _Limits) -> str | None:
    """The ``error`` of a run: which limit was hit or how the program failed; None when it succeeded."""
    if stop == "wall":
        return f"wall time limit ({limits.wall_time_s:g} s) exceeded"
    if stop == "output":
        return f"output limit ({limits.max_output_chars} characters) exceeded; output truncated"
    last = _last_line(stderr)
    if status is None:
        return "the sandbox failed" + (f": {last}" if last else "")
    if status.signal is not None:
        killed_at_hard_limit = status.signal == signal.SIGKILL and status.cpu_time_s >= limits.cpu_time_s
        if status.signal == signal.SIGXCPU or killed_at_hard_limit:
            return f"CPU time limit ({limits.cpu_time_s:g} s) exceeded"
        return f"killed by signal {_signal_name(status.signal)}"
    if status.exit_code:
        if last.startswith("MemoryError"):
            return f"memory limit ({limits.memory_mb} MB) exceeded"
        if "[Errno 27]" in last:  # EFBIG: RLIMIT_FSIZE (Python ignores SIGXFSZ)
            return f"file size limit ({limits.max_file_mb} MB) exceeded"
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


@functools.cache
def namespace_wrapper() -> tuple[str, ...]:
    """The ``unshare`` command prefix this machine supports, probed once per process.

    Tries :data:`NAMESPACE_FLAGS` in order, running the interpreter under each; the first that works
    is kept. Without ``unshare``, or when none works (e.g. in a container without the
    capabilities), returns ``()`` and the sandbox relies on the rlimits and the audit hook.
    """
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    for flags in NAMESPACE_FLAGS:
        command = (unshare, *flags)
        try:
            probe = subprocess.run(
                [*command, sys.executable, "-I", "-S", "-c", "pass"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=30,
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if probe.returncode == 0:
            return command
    return ()


@functools.cache
def _bootstrap_source() -> str:
    """The ``-c`` program of the sandboxed interpreter: the functions below, then the entry call."""
    functions = (_sandbox_main, _wait_program, _run_program, _install_guard)
    body = "\n\n".join(inspect.getsource(fn) for fn in functions)
    return f"from __future__ import annotations\nimport sys\n\n{body}\n_sandbox_main(sys.argv[1:])\n"


# ---- what runs inside the sandbox (standard library only; source sent with -c) --------------------


def _sandbox_main(argv: list[str]) -> None:
    """The sandbox's supervisor: forks the program, waits for it and reports on the status pipe.

    Args:
        argv: The status pipe's fd, the working directory, ``"1"`` to allow processes, then the
            limits in :class:`_Limits` order.
    """
    import os

    status_fd, workdir, allow_processes, limits = int(argv[0]), argv[1], argv[2] == "1", argv[3:]
    wall_time_s = float(limits[1])  # limits come in _Limits order
    pid = os.fork()
    if pid == 0:
        os.close(status_fd)  # the program never holds the report channel
        _run_program(workdir, allow_processes, limits)
        sys.exit(0)
    exit_code, signal_number, cpu = _wait_program(pid, wall_time_s + 1.0)
    kind, number = ("signal", signal_number) if signal_number else ("exit", exit_code)
    os.write(status_fd, f"{kind} {number} {cpu:.6f}".encode())
    os._exit(128 + signal_number if signal_number else exit_code)


def _wait_program(pid: int, timeout_s: float) -> tuple[int, int, float]:
    """Waits for the program, SIGKILLing it after ``timeout_s`` (a backstop if the parent died).

    Returns:
        Exit code (0 when signalled), signal number (0 when it exited) and CPU seconds used.
    """
    import os
    import select

    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # kernels before 5.3: no backstop
        pidfd = None
    if pidfd is not None and not select.select([pidfd], [], [], timeout_s)[0]:
        os.kill(pid, 9)
    _, status, usage = os.wait4(pid, 0)
    cpu = usage.ru_utime + usage.ru_stime
    if os.WIFSIGNALED(status):
        return 0, os.WTERMSIG(status), cpu
    return os.WEXITSTATUS(status), 0, cpu


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
    import traceback

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
    sys.stdout.reconfigure(line_buffering=True, errors="backslashreplace")  # type: ignore[union-attr]
    sys.stderr.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    with open(os.path.join(workdir, "main.py"), encoding="utf-8", errors="surrogateescape") as f:
        source = f.read()
    linecache.cache["<code>"] = (len(source), None, source.splitlines(True), "<code>")
    _install_guard(workdir, allow_processes)
    try:
        exec(compile(source, "<code>", "exec"), {"__name__": "__main__", "__builtins__": builtins})
    except SystemExit:
        raise
    except BaseException as err:
        report = traceback.TracebackException(type(err), err, err.__traceback__, compact=True)
        frames = [f for f in report.stack if f.filename != "<string>"]  # the sandbox's own frames
        report.stack = traceback.StackSummary.from_list(frames)
        sys.stderr.write("".join(report.format()))
        sys.exit(1)


def _install_guard(workdir: str, allow_processes: bool) -> None:
    """Installs the audit hook that denies what the sandbox forbids (see the module docstring)."""
    import os

    denied: tuple[str, ...] = (
        *("socket.", "ctypes.", "syslog.", "os.kill", "signal.pthread_kill", "os.chdir", "os.symlink"),
        *("resource.setrlimit", "resource.prlimit", "gc.get_", "sys.settrace", "sys.setprofile"),
        *("sys.monitoring", "cpython.PyInterpreterState_New", "os.chroot"),
    )
    blocked = {"ctypes", "_ctypes", "_xxsubinterpreters", "_xxinterpchannels", "_testcapi"}
    blocked |= {"_testinternalcapi", "_dbm", "_gdbm", "_sqlite3", "_posixshmem", "readline"}
    blocked.add("posix")  # a fresh copy would bring back what is deleted below
    if not allow_processes:
        denied += ("os.fork", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "subprocess.Popen")
        blocked |= {"subprocess", "_posixsubprocess", "_multiprocessing"}
    for name in ("mkfifo", "mknod"):  # they create files and raise no audit event
        for module in (os, sys.modules["posix"]):
            if hasattr(module, name):
                delattr(module, name)
    path_events: dict[str, tuple[int, ...]] = {"os.rename": (0, 1), "os.link": (0, 1)}
    for event in ("os.remove", "os.rmdir", "os.mkdir", "os.truncate", "os.chmod", "os.chown", "os.utime"):
        path_events[event] = (0,)
    for event in ("os.chflags", "os.lchflags", "os.setxattr", "os.removexattr"):
        path_events[event] = (0,)
    read_roots = tuple(os.path.realpath(p) for p in sys.path if os.path.isdir(p))  # the standard library
    devices = {"/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"}
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

    def resolve(path: Any) -> str | None:
        """The real path of an audited path argument; None for a file descriptor."""
        return None if isinstance(path, int) else os.path.realpath(os.fsdecode(os.fspath(path)))

    def check(real: str | None, roots: tuple[str, ...], what: str) -> None:
        if real is None or real in devices or any(real == r or real.startswith(r + "/") for r in roots):
            return
        raise PermissionError(f"sandbox: {what} {real} is not allowed (outside the working directory)")

    def guard(event: str, args: tuple[Any, ...]) -> None:
        if event.startswith(denied):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and (args[0] in blocked or args[0].partition(".")[0] in blocked):
            raise PermissionError(f"sandbox: importing {args[0]} is not allowed")
        if event == "open":
            real, mode, flags = resolve(args[0]), args[1], args[2]
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or flags & write_flags:
                check(real, (workdir,), "writing")
            else:
                check(real, (workdir, *read_roots), "reading")
            if real is not None and os.path.isdir(real):  # an outside dir fd would make dir_fd= escape checks
                check(real, (workdir,), "opening the directory")
        elif event in path_events:
            for i in path_events[event]:
                check(resolve(args[i]), (workdir,), "changing")

    sys.addaudithook(guard)
