"""nfedge.progress: bars only on a terminal (issue 28 item 9: a stderr redirected to a file got every refresh of
every bar), info lines always."""

import io

from nfedge.progress import DEFAULT, QUIET


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_bars_are_drawn_on_a_terminal_only(monkeypatch):
    for stream, drawn in ((io.StringIO(), False), (_Terminal(), True)):
        monkeypatch.setattr("sys.stderr", stream)
        assert list(DEFAULT.bar(range(50), "work", total=50)) == list(range(50))
        bar = DEFAULT.manual("more", total=3)
        bar.update(3)
        bar.close()
        DEFAULT.info("a line the user needs")
        out = stream.getvalue()
        assert ("work" in out and "more" in out) is drawn, out
        assert out.count("[nfedge] a line the user needs\n") == 1


def test_quiet_draws_and_says_nothing(monkeypatch):
    stream = _Terminal()
    monkeypatch.setattr("sys.stderr", stream)
    assert list(QUIET.bar(range(3), "work")) == [0, 1, 2]
    QUIET.info("x")
    assert stream.getvalue() == ""
