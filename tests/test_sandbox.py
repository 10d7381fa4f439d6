"""The Python sandbox against real attacks: each runs in a real subprocess and must be contained AND reported.

Calls run under the isolator (bubblewrap + seccomp) by default. Where a protection has layers, the
test also runs the weak built-in layers (``allow_weak_sandbox``) with and without their ``unshare``
namespaces, so each is shown to hold where it can. tests/test_isolation.py attacks the isolator.
"""

from __future__ import annotations

import os
import resource
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from envs.sandbox import namespace_wrapper, run_python

HAS_NAMESPACES = bool(namespace_wrapper())
WEAK_NAMESPACES = {"isolator": False, "allow_weak_sandbox": True, "use_namespaces": True}
HOOK_ONLY = {"isolator": False, "allow_weak_sandbox": True, "use_namespaces": False}
MODES = [
    pytest.param({}, id="isolator"),
    pytest.param(
        WEAK_NAMESPACES,
        id="weak-namespaces",
        marks=pytest.mark.skipif(not HAS_NAMESPACES, reason="no unshare"),
    ),
    pytest.param(HOOK_ONLY, id="hook-only"),
]
STUB = "marshal.loads(bytes.fromhex"
"""In the command line of every sandboxed interpreter (the supervisor and the program)."""
FAST = {"cpu_time_s": 2, "wall_time_s": 5, "memory_mb": 256}


def _processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line or working directory contains ``text``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
            with open(f"/proc/{name}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            cwd = os.readlink(f"/proc/{name}/cwd")
        except OSError:
            continue
        if state != "Z" and (text in cmdline or text == cwd):
            found.append(int(name))
    return found


def _denied(result, fragment: str = "PermissionError: sandbox:") -> bool:
    return not result.ok and result.error == "exit code 1" and fragment in result.stderr


# ---- normal use ----------------------------------------------------------------------------------


def test_normal_code_prints_its_result() -> None:
    result = run_python("import math\nprint(sum(range(10)), math.comb(10, 3))", **FAST)
    assert result.ok and result.error is None and result.exit_code == 0 and result.signal is None
    assert result.stdout == "45 120\n" and result.stderr == "" and not result.truncated
    assert result.cpu_time_s is not None and 0 < result.cpu_time_s < 2 and result.wall_time_s < 5


def test_an_exception_is_a_clean_traceback_and_exit_code_1() -> None:
    result = run_python("x = 1\nprint(x / 0)", **FAST)
    assert not result.ok and result.exit_code == 1 and result.error == "exit code 1"
    assert 'File "<code>", line 2, in <module>' in result.stderr and "print(x / 0)" in result.stderr
    assert result.stderr.strip().endswith("ZeroDivisionError: division by zero")
    assert "<string>" not in result.stderr  # the sandbox's own frames are hidden
    syntax = run_python("print(", **FAST)
    assert syntax.error == "exit code 1" and "SyntaxError" in syntax.stderr


def test_sys_exit_code_is_reported() -> None:
    result = run_python("import sys\nprint('bye')\nsys.exit(3)", **FAST)
    assert (
        not result.ok and result.exit_code == 3 and result.error == "exit code 3" and result.stdout == "bye\n"
    )


def test_bad_limits_are_rejected() -> None:
    with pytest.raises(ValueError, match="wall_time_s"):
        run_python("pass", wall_time_s=0)
    with pytest.raises(ValueError, match="memory_mb"):
        run_python("pass", memory_mb=1.5)  # type: ignore[arg-type]
    # The isolator's disk size is named as itself (it once borrowed memory_mb's check and name).
    with pytest.raises(ValueError, match=r"^disk_mb must be a positive number, got -5"):
        run_python("pass", disk_mb=-5)
    with pytest.raises(ValueError, match=r"^disk_mb must be an int, got 2.5"):
        run_python("pass", disk_mb=2.5)  # type: ignore[arg-type]


def test_the_working_directory_is_private_fresh_and_removed() -> None:
    code = (
        "import os\nprint(os.getcwd())\nprint(oct(os.stat('.').st_mode & 0o777), sorted(os.listdir('.')))\n"
    )
    code += "open('scratch.txt', 'w').write('ok')\nprint(open('scratch.txt').read())"
    tmp = os.path.realpath(tempfile.gettempdir())
    before = {n for n in os.listdir(tmp) if n.startswith("actorlearner-sandbox-")}
    first, second = run_python(code, **FAST), run_python(code, **FAST)
    assert first.ok and second.ok, first.stderr
    assert first.stdout == second.stdout == "/work\n0o700 ['main.py']\nok\n"  # a fresh tmpfs each time
    assert {n for n in os.listdir(tmp) if n.startswith("actorlearner-sandbox-")} == before  # none on the host
    weak = run_python(code, **HOOK_ONLY, **FAST)
    workdir, listing, content = weak.stdout.splitlines()
    assert os.path.dirname(workdir) == tmp and os.path.basename(workdir).startswith("actorlearner-sandbox-")
    assert listing == "0o700 ['main.py']" and content == "ok"
    assert not os.path.exists(workdir)


def test_many_concurrent_calls_from_threads() -> None:
    def call(i: int):
        return run_python(f"print({i} * {i})" if i % 4 else f"print({i})\n1 / 0", **FAST)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(call, range(24)))
    for i, result in enumerate(results):
        if i % 4:
            assert result.ok and result.stdout == f"{i * i}\n", result
        else:
            assert (
                result.error == "exit code 1"
                and result.stdout == f"{i}\n"
                and "ZeroDivision" in result.stderr
            )


# ---- limits --------------------------------------------------------------------------------------


def test_infinite_loop_hits_the_cpu_limit() -> None:
    start = time.monotonic()
    result = run_python("while True: pass", cpu_time_s=1, wall_time_s=10)
    assert not result.ok and result.error == "CPU time limit (1 s) exceeded" and result.signal == "SIGXCPU"
    assert result.cpu_time_s is not None and result.cpu_time_s >= 0.9
    assert time.monotonic() - start < 10  # the CPU limit, not the wall limit, ended it


def test_sleeping_forever_hits_the_wall_limit() -> None:
    start = time.monotonic()
    result = run_python(
        "import time\nprint('started', flush=True)\ntime.sleep(600)", cpu_time_s=1, wall_time_s=1
    )
    assert not result.ok and result.error == "wall time limit (1 s) exceeded"
    assert result.stdout == "started\n"  # output printed before the kill is kept
    assert time.monotonic() - start < 3


@pytest.mark.parametrize(
    "code",
    ["x = bytearray(10**10)", "blocks = []\nwhile True: blocks.append(bytearray(2**20))", "x = ' ' * 2**40"],
    ids=["one-allocation", "growing", "string"],
)
def test_memory_bomb_hits_the_memory_limit(code: str) -> None:
    result = run_python(code, cpu_time_s=3, wall_time_s=10, memory_mb=256)
    assert not result.ok and result.error == "memory limit (256 MB) exceeded", result
    assert result.stderr.strip().endswith("MemoryError")


def test_a_big_file_hits_the_file_size_limit() -> None:
    result = run_python("open('big', 'wb').write(b'x' * 3 * 2**20)", max_file_mb=1, **FAST)
    assert not result.ok and result.error == "file size limit (1 MB) exceeded", result


def test_printing_gigabytes_is_truncated_quickly_with_bounded_parent_memory() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    result = run_python(
        "import sys\nwhile True: sys.stdout.write('x' * 2**20)", max_output_chars=100_000, **FAST
    )
    assert not result.ok and result.truncated
    assert result.error == "output limit (100000 bytes) exceeded; output truncated"
    assert result.stdout == "x" * 100_000
    assert time.monotonic() - start < 3
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024  # KiB
    flood = run_python("import sys\nwhile True: sys.stderr.write('e' * 2**20)", max_output_chars=1000, **FAST)
    assert flood.truncated and flood.stderr == "e" * 1000


def test_rlimits_cannot_be_raised() -> None:
    code = "import resource\nresource.setrlimit(resource.RLIMIT_CPU, (1000, 1000))"
    assert _denied(run_python(code, **FAST), "resource.setrlimit is not allowed")


# ---- processes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    [
        "import os\nwhile True: os.fork()",
        "import subprocess\nwhile True: subprocess.Popen(['sleep', '100'])",
        "import os\nwhile True: os.system('sleep 100 &')",
        "import os\nos.execv('/bin/sh', ['sh', '-c', 'sleep 100'])",
        "import os\nos.posix_spawn('/bin/sleep', ['sleep', '100'], {})",
        "import multiprocessing\nmultiprocessing.Process(target=print).start()",
    ],
    ids=["fork-loop", "subprocess-loop", "system", "exec", "posix_spawn", "multiprocessing"],
)
def test_fork_bombs_and_subprocesses_are_denied_and_leave_nothing_behind(code: str) -> None:
    result = run_python("import os\nprint(os.getcwd(), flush=True)\n" + code, **FAST)
    assert _denied(result), result
    assert _processes_mentioning(STUB) == []


@pytest.mark.parametrize("mode", MODES)
def test_processes_that_escape_the_session_are_killed(mode: dict) -> None:
    """With processes allowed: a fork tree and exec'd sleeps in new sessions all die with the call."""
    marker = f"{uuid.uuid4().int % 10**6}.25"
    code = f"""
import os, subprocess, sys, time
print(os.getcwd(), flush=True)
for _ in range(3):
    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep({marker})'], start_new_session=True)
for _ in range(4):  # a bounded fork bomb: up to 16 processes, each in its own session
    try:
        if os.fork() == 0:
            os.setsid()
    except OSError:  # with the sleepers, the last round can reach the process limit (16)
        break
time.sleep(600)
"""
    result = run_python(code, allow_processes=True, **mode, cpu_time_s=2, wall_time_s=2)
    assert result.error == "wall time limit (2 s) exceeded", result
    workdir = result.stdout.split()[0]
    time.sleep(0.2)  # SIGKILL is asynchronous
    assert _processes_mentioning(marker) == [] and _processes_mentioning(STUB) == []
    if workdir != "/work":  # the weak layers' host working directory
        assert _processes_mentioning(workdir) == []


# ---- the file system -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "template",
    [
        "open({path!r}, 'w').write('pwned')",
        "import os\nos.close(os.open({path!r}, os.O_WRONLY | os.O_CREAT))",
        "import pathlib\npathlib.Path({path!r}).write_text('pwned')",
        "import os\nopen('inside', 'w').close()\nos.rename('inside', {path!r})",
        "import os\nos.mkdir({path!r})",
        "import os\nos.symlink({path!r}, 'link')\nopen('link', 'w').write('pwned')",
        "import shutil\nopen('inside', 'w').close()\nshutil.copy('inside', {path!r})",
    ],
    ids=["open", "os.open", "pathlib", "rename", "mkdir", "symlink", "shutil.copy"],
)
@pytest.mark.parametrize("where", ["absolute", "relative"])
def test_writing_outside_the_working_directory_is_blocked(template: str, where: str, mode: dict) -> None:
    name = f"escape_{uuid.uuid4().hex}"
    target = os.path.join(os.path.realpath(tempfile.gettempdir()), name)
    path = target if where == "absolute" else f"../{name}"  # the working dir is in the temp dir
    result = run_python(template.format(path=path), **mode, **FAST)
    assert _denied(result), result
    assert not os.path.lexists(target)


@pytest.mark.parametrize("function", ["os.mkfifo", "os.mknod", "posix.mkfifo"])
def test_file_creators_without_audit_events_are_removed(function: str) -> None:
    target = os.path.join(os.path.realpath(tempfile.gettempdir()), f"escape_{uuid.uuid4().hex}")
    module = function.split(".")[0]
    result = run_python(f"import {module}\n{function}({target!r})", **FAST)
    assert result.error == "exit code 1" and f"has no attribute '{function.split('.')[1]}'" in result.stderr
    assert not os.path.lexists(target)
    assert _denied(
        run_python("import sys\ndel sys.modules['posix']\nimport posix", **FAST), "importing posix"
    )


@pytest.mark.parametrize("mode", MODES)
def test_reading_parent_secrets_is_blocked(mode: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = f"s3cret-{uuid.uuid4().hex}"
    monkeypatch.setenv("ACTORLEARNER_TEST_SECRET", secret)
    code = f"""
import os
print(sorted(os.environ))
print(os.environ.get('ACTORLEARNER_TEST_SECRET'))
for pid in (os.getppid(), {os.getpid()}, 1, os.getpid()):
    for name in ('environ', 'cmdline', 'mem'):
        try:
            print(open(f'/proc/{{pid}}/{{name}}', 'rb').read())
        except OSError as err:
            print('denied', type(err).__name__)
"""
    result = run_python(code, **mode, **FAST)
    assert result.ok, result
    lines = result.stdout.splitlines()
    assert lines[0] == "['HOME', 'LANG', 'LC_ALL', 'PATH', 'TMPDIR']" and lines[1] == "None"
    assert lines[2:] == ["denied PermissionError"] * 12
    assert secret not in result.stdout + result.stderr


def test_reading_system_files_is_blocked_but_the_standard_library_works() -> None:
    result = run_python("print(open('/etc/hostname').read())", **FAST)
    assert _denied(result, "reading /etc/hostname is not allowed")
    stdlib = run_python("import fractions, json, statistics, tempfile\nprint(json.dumps([1]))", **FAST)
    assert stdlib.ok and stdlib.stdout == "[1]\n", stdlib


# ---- the network ---------------------------------------------------------------------------------


@pytest.fixture()
def listener():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield server
    server.close()


def _no_connection(server: socket.socket) -> bool:
    readable, _, _ = select.select([server], [], [], 0.2)
    return not readable


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "template",
    [
        "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'hi')",
        "import socket\nsocket.socket()",
        "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}/', timeout=1)",
    ],
    ids=["connect", "socket", "urllib"],
)
def test_network_access_is_blocked(template: str, mode: dict, listener: socket.socket) -> None:
    code = template.format(port=listener.getsockname()[1])
    result = run_python(code, **mode, **FAST)
    assert _denied(result, "sandbox: socket."), result
    assert _no_connection(listener)


@pytest.mark.skipif(not HAS_NAMESPACES, reason="no unshare: the network namespace is not available")
def test_the_network_namespace_stops_a_process_the_hook_does_not_watch(listener: socket.socket) -> None:
    """A subprocess (allowed here) runs without the audit hook; the namespace alone blocks it."""
    port = listener.getsockname()[1]
    child = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1)"
    code = f"import subprocess, sys\nsubprocess.run([sys.executable, '-I', '-c', {child!r}], check=True)"
    result = run_python(code, allow_processes=True, **WEAK_NAMESPACES, **FAST)
    assert not result.ok and "CalledProcessError" in result.stderr, result
    assert "Network is unreachable" in result.stderr  # refused by the kernel, not by the hook
    assert "PermissionError" not in result.stderr
    assert _no_connection(listener)


def test_ctypes_and_tracing_are_blocked() -> None:
    assert _denied(run_python("import ctypes", **FAST), "importing ctypes is not allowed")
    assert _denied(run_python("import sys\nsys.settrace(lambda *a: None)", **FAST), "sys.settrace")


def test_the_parent_keeps_its_signal_handlers_and_working_directory() -> None:
    watched = (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGALRM)
    handlers, cwd = [signal.getsignal(s) for s in watched], os.getcwd()
    assert run_python("print(1)", **FAST).ok
    assert [signal.getsignal(s) for s in watched] == handlers and os.getcwd() == cwd


# ---- the file system at the OS level, with the audit hook out of the way --------------------------


@pytest.mark.skipif(not HAS_NAMESPACES, reason="no unshare: no mount namespace")
def test_the_file_system_is_read_only_to_a_process_the_hook_does_not_watch() -> None:
    """A shell (allowed here) runs without the audit hook: the mounts, not the hook, must stop it."""
    name = f"escape_{uuid.uuid4().hex}"
    repo_target = os.path.join(os.path.dirname(os.path.abspath(__file__)), name)  # not a hidden directory
    shell = f"""
echo x > {repo_target}; echo "repo $?"
echo x > /tmp/{name}; echo "tmp $?"
echo x > inside && echo "inside 0"
echo x > /dev/null && echo "devnull 0"
mount -o remount,rw / 2>/dev/null; echo "remount $?"
grep CapEff /proc/self/status
for fd in /proc/1/fd/*; do echo 'signal 9 99.0' 2>/dev/null > $fd; done
ls -A /tmp
"""
    code = f"import subprocess\nsubprocess.run(['/bin/sh', '-c', {shell!r}])"
    try:
        result = run_python(code, allow_processes=True, **WEAK_NAMESPACES, **FAST)
    finally:
        for path in (repo_target, os.path.join(os.path.realpath(tempfile.gettempdir()), name)):
            if os.path.lexists(path):
                os.remove(path)
                pytest.fail(f"the sandbox wrote {path}")
    lines = result.stdout.splitlines()
    assert result.ok and result.exit_code == 0, result  # the status report was not forged
    assert lines[0] != "repo 0" and lines[1] != "tmp 0" and lines[2:4] == ["inside 0", "devnull 0"]
    assert lines[4] != "remount 0" and lines[5].split() == ["CapEff:", "0000000000000000"]
    # /tmp holds the workdir, plus the Python install bound back when it lies under /tmp (a CI clone)
    tmp = os.path.realpath(tempfile.gettempdir())
    bound = {
        os.path.relpath(os.path.realpath(p), tmp).split(os.sep)[0]
        for p in (sys.prefix, sys.base_prefix, sys.executable)
        if os.path.realpath(p).startswith(tmp + os.sep)
    }
    listed = lines[6:]
    assert sum(entry.startswith("actorlearner-sandbox-") for entry in listed) == 1
    assert {e for e in listed if not e.startswith("actorlearner-sandbox-")} <= bound, listed


# ---- the audit hook under attack from inside ------------------------------------------------------

_FRAME_ATTACK = """
import os
target = {target!r}

def with_a_free_variable():
    os = None
    return lambda *args, **kwargs: (os, None)[1]

try:
    open(target, 'w')
except PermissionError as err:  # the traceback leads to the hook's frames
    tb, frames = err.__traceback__.tb_next, []  # the frames below this one
    while tb:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in frames:
        for value in list(frame.f_locals.values()):
            for code in ((lambda *args, **kwargs: None).__code__, with_a_free_variable().__code__):
                try:
                    value.__code__ = code  # every path check would then pass
                except Exception:
                    pass
            try:
                value.clear()  # e.g. the set of blocked modules
            except Exception:
                pass
open(target, 'w').write('pwned')
"""


def _target() -> str:
    return os.path.join(os.path.realpath(tempfile.gettempdir()), f"escape_{uuid.uuid4().hex}")


@pytest.mark.parametrize("mode", MODES)
def test_editing_the_hook_through_its_frames_changes_nothing(mode: dict) -> None:
    target = _target()
    result = run_python(_FRAME_ATTACK.format(target=target), **mode, **FAST)
    assert _denied(result, f"writing {target} is not allowed"), result
    assert not os.path.lexists(target)


@pytest.mark.parametrize("mode", MODES)
def test_monkeypatching_what_the_hook_used_to_look_up_changes_nothing(mode: dict) -> None:
    target = _target()
    code = f"""
import builtins, os, posixpath
workdir = os.getcwd()
os.path.realpath = posixpath.realpath = lambda path, *args, **kwargs: workdir + '/ok'
os.getcwd = lambda: workdir
open({target!r}, 'w').write('pwned')
"""
    result = run_python(code, **mode, **FAST)
    assert _denied(result, f"writing {target} is not allowed"), result
    assert not os.path.lexists(target)


def test_the_audit_hook_looks_up_nothing_when_called() -> None:
    """No global, builtin or closure lookup: monkeypatching or editing a cell cannot reach the checks."""
    import dis
    import types

    from envs import sandbox

    codes = [
        const
        for factory in (sandbox._path_resolvers, sandbox._make_guard)
        for const in factory.__code__.co_consts
        if isinstance(const, types.CodeType)
    ]
    assert {code.co_name for code in codes} == {"resolve", "fd_path", "allowed", "guard"}
    lookups = {"LOAD_GLOBAL", "LOAD_NAME", "LOAD_DEREF", "LOAD_CLASSDEREF", "LOAD_CLOSURE"}
    for code in codes:
        assert code.co_freevars == () and code.co_cellvars == (), code.co_name
        assert not {i.opname for i in dis.get_instructions(code)} & lookups, code.co_name


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("module", ["_posixsubprocess", "_ctypes", "_sqlite3"])
def test_a_blocked_extension_is_refused_under_another_name(module: str, mode: dict) -> None:
    code = f"""
import glob, importlib.util, os
paths = glob.glob(os.path.dirname(os.__file__) + '/lib-dynload/{module}.*so')
if not paths:
    raise SystemExit(42)
spec = importlib.util.spec_from_file_location('zz.{module}', paths[0])
importlib.util.module_from_spec(spec)
"""
    result = run_python(code, **mode, **FAST)
    if result.exit_code == 42:
        pytest.skip(f"this Python has no {module} extension")
    assert _denied(result, f"importing zz.{module} is not allowed"), result


def test_a_fresh_copy_of_a_built_in_module_cannot_be_made() -> None:
    target = _target()
    code = (
        "import _imp, importlib.machinery\n"
        "posix = _imp.create_builtin(importlib.machinery.ModuleSpec('posix', None))\n"
        f"posix.mkfifo({target!r})"
    )
    result = run_python(code, **FAST)
    assert result.error == "exit code 1" and "has no attribute 'create_builtin'" in result.stderr, result
    assert not os.path.lexists(target)


@pytest.mark.parametrize("mode", MODES)
def test_other_processes_cannot_be_signalled(mode: dict) -> None:
    """``signal.pidfd_send_signal`` raises no audit event, so it is removed; ``os.kill(pg)`` is denied."""
    victim = subprocess.Popen(["sleep", "30"])
    try:
        code = f"""
import os, signal
print(hasattr(os, 'pidfd_open'), hasattr(signal, 'pidfd_send_signal'))
for attempt in (
    lambda: signal.pidfd_send_signal(os.pidfd_open({victim.pid}), signal.SIGKILL),
    lambda: os.kill({victim.pid}, signal.SIGKILL),
    lambda: os.killpg({victim.pid}, signal.SIGKILL),
):
    try:
        attempt()
        print('sent')
    except Exception as err:
        print(type(err).__name__)
"""
        result = run_python(code, **mode, **FAST)
        time.sleep(0.1)
        assert victim.poll() is None, "the sandbox killed a process of the caller"
        assert result.ok and result.stdout.split() == [
            *("False", "False", "AttributeError", "PermissionError", "PermissionError")
        ], result
    finally:
        victim.kill()
        victim.wait()


# ---- teardown and reports -------------------------------------------------------------------------


def _run_script(script: str) -> str:
    """Runs ``script`` in a fresh interpreter that can import actorlearner; returns its stdout."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": repo}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _modes() -> list[dict]:
    """The isolator, then the weak layers with namespaces (where unshare works) and without."""
    return [{}, *([WEAK_NAMESPACES] if HAS_NAMESPACES else []), HOOK_ONLY]


def test_killed_runs_leave_no_zombie_when_the_caller_is_a_subreaper() -> None:
    """Like a trainer that is PID 1 in a container: orphans come to it, and it never reaps them."""
    script = f"""
import ctypes, os, time
assert ctypes.CDLL(None).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
from envs.sandbox import run_python
for mode in {_modes()}:
    for _ in range(3):
        run_python('import time\\ntime.sleep(60)', wall_time_s=0.3, **mode)
        run_python('while True: print("x" * 1000)', max_output_chars=100, **mode)
    orphan = 'import subprocess\\nsubprocess.Popen(["sleep", "60"], start_new_session=True)'
    run_python(orphan, allow_processes=True, **mode)
    fork_and_hang = 'import os, time\\nif os.fork() == 0:\\n    os.setsid()\\ntime.sleep(60)'
    run_python(fork_and_hang, allow_processes=True, wall_time_s=0.3, **mode)
time.sleep(0.3)
states = []
for name in os.listdir('/proc'):
    try:
        with open(f'/proc/{{name}}/stat') as f:
            fields = f.read().rsplit(')', 1)[1].split()
    except (OSError, IndexError):
        continue
    if int(fields[1]) == os.getpid():
        states.append(fields[0])
print(' '.join(states))
"""
    assert _run_script(script).split() == []  # no child left, zombie (Z) or alive


def test_the_working_directory_is_removed_even_if_the_program_made_it_read_only() -> None:
    """The caller runs without capabilities here (like a non-root user): ``rmtree`` alone would fail."""
    script = f"""
import ctypes, os
header = (ctypes.c_uint32 * 2)(0x20080522, 0)
assert ctypes.CDLL(None).capset(header, (ctypes.c_uint32 * 6)()) == 0  # drop CAP_DAC_OVERRIDE and all
from envs.sandbox import run_python
code = "import os\\nprint(os.getcwd())\\nos.mkdir('d')\\nopen('d/f', 'w').close()\\n"
code += "os.chmod('d', 0o500)\\nos.chmod('.', 0o500)"
for mode in {_modes()[1:]}:
    result = run_python(code, **mode)
    print(result.ok, os.path.exists(result.stdout.strip()))
"""
    assert set(_run_script(script).splitlines()) == {"True False"}


def test_limits_are_named_on_evidence_not_on_what_the_program_prints() -> None:
    raised = run_python("import signal\nsignal.raise_signal(signal.SIGXCPU)", **FAST)
    assert raised.signal == "SIGXCPU" and raised.error == "killed by signal SIGXCPU", raised
    faked = run_python("import sys\nsys.stderr.write('MemoryError\\n')\nsys.exit(3)", **FAST)
    assert faked.error == "exit code 3", faked
    efbig = run_python("raise OSError(27, 'File too large')", **FAST)
    assert efbig.error == "exit code 1" and "[Errno 27]" in efbig.stderr, efbig


def test_output_is_cut_in_bytes_never_inside_a_character() -> None:
    result = run_python("import sys\nwhile True: sys.stdout.write('é' * 1000)", max_output_chars=1001, **FAST)
    assert result.truncated and result.error == "output limit (1001 bytes) exceeded; output truncated"
    assert result.stdout == "é" * 500  # 1000 bytes: the cut half character is dropped, not replaced


def test_the_status_report_is_read_up_to_a_cap() -> None:
    from envs.sandbox import _pump

    read_end, write_end = os.pipe()
    os.write(write_end, b"x" * 10_000)
    os.close(write_end)
    buffers = {read_end: bytearray()}
    try:
        assert _pump(buffers, read_end, time.monotonic() + 5, cap=100) is None
    finally:
        os.close(read_end)
    assert len(buffers[read_end]) == 4096
