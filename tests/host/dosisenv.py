"""Test helper: a clean environment for running the real `dosis` executable in a subprocess."""

import os
from pathlib import Path


def clean_env(root: Path, **extra: str) -> dict[str, str]:
    """No DOSIS_* of the user's, a temporary HOME, keystore, run directory and runtime
    directory under `root` (made, mode 0700), and a UTF-8 locale (a nurse's terminal); then
    `extra` on top."""
    drop = ("LC_ALL", "LC_CTYPE", "LANGUAGE", "PYTHONIOENCODING")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOSIS_") and k not in drop}
    for d in ("home", "xdg", "run"):
        (root / d).mkdir(mode=0o700, exist_ok=True)
    env.update(
        HOME=str(root / "home"),
        XDG_CONFIG_HOME=str(root / "home" / ".config"),
        XDG_CACHE_HOME=str(root / "home" / ".cache"),
        XDG_RUNTIME_DIR=str(root / "xdg"),
        DOSIS_RUN_DIR=str(root / "run"),
        DOSIS_KEYSTORE=str(root / "keys.json"),
        LANG="C.UTF-8",
    )
    env.update(extra)
    return env
