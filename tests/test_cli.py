"""The CLI: `python -m minillm` is the `minillm` command; user mistakes give one line and exit 2."""
import subprocess
import sys

from minillm.cli import main
from minillm.errors import MiniLLMError


def test_python_dash_m_shows_help():
    r = subprocess.run([sys.executable, "-m", "minillm", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "minillm" in r.stdout


def test_user_error_is_one_line_exit_2(monkeypatch, capsys):
    def boom(args):
        raise MiniLLMError("input file 'x.txt' does not exist")
    import minillm.cli as cli
    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].add_parser("boom").set_defaults(func=boom)
    assert main(["boom"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: input file 'x.txt' does not exist"
