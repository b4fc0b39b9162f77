import json
import logging

import pytest

from mmssl.train.run_log import RunLog, read_metrics, repair_metrics


def _records(steps: range) -> str:
    return "".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in steps)


@pytest.mark.parametrize("tail", ['{"step": 4, "lo', "\x00" * 12, '{"step": 4, "loss": 0.25}'])
def test_a_cut_off_last_line_is_dropped_on_resume_with_a_warning(tmp_path, caplog, tail):
    path = tmp_path / "metrics.jsonl"
    path.write_text(_records(range(1, 4)) + tail)  # a kill or a full disk mid-write; or a whole record, no newline
    with caplog.at_level(logging.WARNING, logger="mmssl.train.run_log"):
        RunLog(tmp_path, tensorboard=False, resume_step=3).close()
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    cut = not tail.endswith("}")
    assert ("dropped a partial last line" in caplog.text) == cut


def test_repair_keeps_whole_records_and_appends_after_them(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(_records(range(1, 3)) + '{"step": 3, "loss"')
    log = RunLog(tmp_path, tensorboard=False)  # no resume (train.resume=none): still repaired before appending
    log.log(3, {"loss": 0.5})
    log.close()
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    before = path.read_bytes()
    repair_metrics(path, after_step=5)
    assert path.read_bytes() == before  # nothing to repair: left as it is


def test_a_bad_line_before_the_last_is_an_error_naming_it(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(_records(range(1, 3)) + "not json\n" + _records(range(3, 4)))
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 3: not a metrics record"):
        repair_metrics(path, after_step=3)
