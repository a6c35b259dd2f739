"""The `runner` command and `python -m runner`: signal rules first, then the command line.

The signal handler goes in before `runner.cli` is imported: those imports take most of a
second, and a Ctrl-C during them must exit 75 like any other, not end in a traceback.
"""

from runner.signals import ROUTER


def main() -> None:
    ROUTER.install()
    from runner.cli import main as command_line  # here: imported under the handler

    try:
        command_line(prog_name="runner")
    finally:
        ROUTER.exiting()


if __name__ == "__main__":
    main()
