"""pytest picks the rootdir (and with it the ini file) before it loads plugins, so a path option
written with a space (``--results-dir /x``) can move it; here that is found and the run restarted
with the option joined (``--results-dir=/x``), or stopped with the remedy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PATH_OPTIONS = ("--suite-config", "--results-dir", "--baselines-dir", "--cache-dir", "--prompts", "--model")


def check_rootdir_not_taken_from_an_option(config: pytest.Config) -> None:
    """pytest picks the rootdir (and with it the ini file: testpaths, addopts such as -m 'not gpu',
    markers) before it loads plugins, so in `--results-dir /x` it takes the existing path after the
    space for a test path. When that moved the rootdir, a command-line run starts again with the
    option written `--results-dir=/x` (nothing has run yet); a run pytest cannot restart (in-process,
    or the restart did not help) stops with the remedy instead of using another project's settings."""
    args = [str(a) for a in config.invocation_params.args]
    spaced = [
        name
        for name, value in zip(args, args[1:])
        if name in PATH_OPTIONS and (Path(config.invocation_params.dir) / Path(value).expanduser()).exists()
    ]
    if not spaced:
        return
    expected = _rootdir_from_test_paths(config)
    if expected is None or Path(expected).resolve() == config.rootpath.resolve():
        return
    if _restartable(args):
        _restart_with_joined_options(config, args)
    raise pytest.UsageError(
        f"{spaced[0]} <path>: pytest took the path for a test path and chose the rootdir {config.rootpath} "
        f"instead of {expected} (it decides the rootdir before plugins load); write {spaced[0]}=<path>"
    )


RESTARTED_ENV = "QUANT_FIXTURES_JOINED_OPTIONS"  # set in the restarted run: never restart twice


def _rootdir_from_test_paths(config: pytest.Config) -> Path | None:
    """Where the rootdir would be from the test paths alone (pytest's own function); None where
    this pytest lacks it (the check cannot tell, so it stays quiet)."""
    try:
        import inspect

        from _pytest.config.findpaths import determine_setup

        given = {
            "inifile": config.option.inifilename,
            "override_ini": config.option.override_ini,
            "args": [str(a) for a in config.option.file_or_dir or []],
            "rootdir_cmd_arg": config.option.rootdir or None,
            "invocation_dir": config.invocation_params.dir,
        }
        accepted = inspect.signature(determine_setup).parameters
        return Path(determine_setup(**{k: v for k, v in given.items() if k in accepted})[0])
    except Exception:
        return None


def joined_path_options(args: list[str]) -> list[str]:
    """``args`` with every path option and its value joined by '=' (``--results-dir /x`` ->
    ``--results-dir=/x``); everything else as given."""
    joined: list[str] = []
    i = 0
    while i < len(args):
        if args[i] in PATH_OPTIONS and i + 1 < len(args):
            joined.append(f"{args[i]}={args[i + 1]}")
            i += 2
        else:
            joined.append(args[i])
            i += 1
    return joined


def _restartable(args: list[str]) -> bool:
    """A run started from the command line (``pytest ...`` or ``python -m pytest ...``) that has
    not been restarted already; an in-process pytest.main() is not ours to replace."""
    import sys

    return not os.environ.get(RESTARTED_ENV) and sys.argv[1:] == args


def _restart_with_joined_options(config: pytest.Config, args: list[str]) -> None:
    """Replace this process with the same pytest run, path options joined (so the rootdir is the
    one the test paths give). Output capture is stopped first: it redirects the file descriptors
    the new process inherits."""
    import sys

    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        capture.stop_global_capturing()
    os.environ[RESTARTED_ENV] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "pytest", *joined_path_options(args)])
