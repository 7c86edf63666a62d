# rewind REPL driver for Python, started by rewind-agent (see mod.rs).
# Requests arrive as JSON lines on the original stdin; each cell's output
# goes to the real stdout/stderr, followed by an end marker on both.
import ast
import json
import os
import signal
import sys
import traceback

_nonce = os.environ.pop("REWIND_REPL_NONCE")
_workdir = os.environ.pop("REWIND_REPL_WORKDIR", "/workspace")
_requests = os.fdopen(os.dup(0), "rb", 0)
_null = os.open("/dev/null", os.O_RDONLY)
os.dup2(_null, 0)
os.close(_null)
sys.stdin = open(0, "r", closefd=False)
_busy = False


def _sigint(_signum, _frame):
    if _busy:
        raise KeyboardInterrupt


signal.signal(signal.SIGINT, _sigint)
_globals = {"__name__": "__main__", "__builtins__": __builtins__}


def _cell(code):
    tree = ast.parse(code, "<cell>", "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    exec(compile(tree, "<cell>", "exec"), _globals)
    if last is not None:
        value = eval(compile(last, "<cell>", "eval"), _globals)
        if value is not None:
            print(repr(value))


def _run(code):
    global _busy
    try:
        os.chdir(_workdir)
        _busy = True
        try:
            _cell(code)
        finally:
            _busy = False
        return "ok"
    except BaseException as exc:  # the cell's error, reported, never fatal
        _busy = False
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != "<cell>":
            tb = tb.tb_next
        if isinstance(exc, SyntaxError):
            tb = None
        traceback.print_exception(type(exc), exc, tb)
        return "error"
    finally:
        try:
            os.chdir("/")
        except OSError:
            pass


def _main():
    while True:
        line = _requests.readline()
        if not line:
            return
        request = json.loads(line)
        status = "error"
        try:
            status = _run(request["code"])
        except KeyboardInterrupt:
            pass
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
        marker = "\x1eREWIND-%s-%d-" % (_nonce, request["id"])
        os.write(1, (marker + status + "\n").encode())
        os.write(2, (marker + status + "\n").encode())


_main()
