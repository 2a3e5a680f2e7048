"""The CLI's log shows candorlm's own messages, not other libraries' chatter."""

import logging

from candorlm.cli import _setup


def test_other_libraries_log_only_warnings(capsys):
    root = logging.getLogger()
    saved = root.level, list(root.handlers), logging.getLogger("candorlm").level
    try:
        _setup()
        assert logging.getLogger("candorlm.tasks").isEnabledFor(logging.INFO)
        # fontTools' subsetter logs about a hundred INFO lines per embedded font subset
        assert not logging.getLogger("fontTools.subset").isEnabledFor(logging.INFO)
        assert logging.getLogger("fontTools.subset").isEnabledFor(logging.WARNING)
        from candorlm.fonts.web import subset_font
        subset_font("中国")
        assert "pruned" not in capsys.readouterr().err
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
        logging.getLogger("candorlm").setLevel(saved[2])
