"""Run tests/fw test modules on MicroPython or CPython: every test_* function, then a summary."""

# Usage:  micropython tests/fw/mprun.py [MODULE_OR_PATH ...]
#         python3 tests/fw/mprun.py [MODULE_OR_PATH ...]
# With no arguments every tests/fw/test_*.py runs. Arguments are module names (test_schedule)
# or file paths (tests/fw/test_schedule.py). The last line is always "N passed, M failed"; the
# exit status is 1 if anything failed or if no test ran at all. There is deliberately no way to
# skip a test: a test that cannot run here fails.
#
# Only what both interpreters have: no os.path, glob, pathlib or inspect on MicroPython.

import gc
import os
import sys

try:
    import traceback
except ImportError:  # MicroPython: sys.print_exception instead
    traceback = None


def _print_traceback(exc):
    if hasattr(sys, "print_exception"):
        sys.print_exception(exc, sys.stdout)  # type: ignore[attr-defined]
    elif traceback is not None:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stdout)


def _split(path):
    """Split a file path into (directory, module name); directory is "" when there is none."""
    path = path.replace("\\", "/")
    slash = path.rfind("/")
    directory, base = (path[:slash], path[slash + 1 :]) if slash >= 0 else ("", path)
    if base.endswith(".py"):
        base = base[:-3]
    return directory, base


def _here():
    directory, _ = _split(__file__)
    return directory or "."


def _discover(directory):
    names = [n[:-3] for n in os.listdir(directory) if n.startswith("test_") and n.endswith(".py")]
    names.sort()
    return names


def _module_names(args):
    """Turn the arguments into importable module names, putting their directories on sys.path."""
    if not args:
        here = _here()
        if here not in sys.path:
            sys.path.insert(0, here)
        return _discover(here)
    names = []
    for arg in args:
        if arg.endswith(".py") or "/" in arg:
            directory, name = _split(arg)
            if directory and directory not in sys.path:
                sys.path.insert(0, directory)
        else:
            name = arg
        names.append(name)
    return names


def _describe(exc):
    msg = str(exc)
    return type(exc).__name__ + (": " + msg if msg else "")


def _run_module(name, counts):
    try:
        __import__(name)
        module = sys.modules[name]
    except Exception as exc:
        counts[1] += 1
        print("FAIL %s (import): %s" % (name, _describe(exc)))
        _print_traceback(exc)
        return
    tests = [n for n in sorted(dir(module)) if n.startswith("test_")]
    for test_name in tests:
        func = getattr(module, test_name)
        if not callable(func):
            continue
        label = name + "." + test_name
        try:
            result = func()
            if result is not None:
                # An async or generator test would "pass" without running its body.
                if hasattr(result, "close"):
                    result.close()
                msg = "test returned %r; async/generator tests are not supported"
                raise TypeError(msg % (result,))
        except Exception as exc:
            counts[1] += 1
            print("FAIL %s: %s" % (label, _describe(exc)))
            _print_traceback(exc)
        else:
            counts[0] += 1
            print("PASS " + label)
        gc.collect()


def main(args):
    impl = sys.implementation
    print("mprun: %s %s" % (impl.name, ".".join(str(v) for v in impl.version[:3])))
    counts = [0, 0]  # passed, failed
    for name in _module_names(args):
        _run_module(name, counts)
    passed, failed = counts
    if passed + failed == 0:
        print("mprun: no tests ran")
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed or not passed + failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
