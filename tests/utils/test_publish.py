"""Result tables: printed once, and written into the run's log file when there is one."""

import logging

from metareid.utils.publish import publish_table


def test_table_is_printed_once_and_appended_to_root_log_files(tmp_path, capsys):
    log_file = tmp_path / "train.log"
    handler = logging.FileHandler(log_file)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        publish_table("NM: 95.26, BG: 93.86, CL: 83.30")
    finally:
        root.removeHandler(handler)
        handler.close()
    assert capsys.readouterr().out.count("NM: 95.26") == 1
    assert "NM: 95.26, BG: 93.86, CL: 83.30" in log_file.read_text()
