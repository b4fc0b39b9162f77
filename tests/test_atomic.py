from mmssl.atomic import write_text_atomic


def test_write_text_atomic_replaces_whole_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    write_text_atomic(target, '{"top1": 0.9}')
    assert target.read_text() == '{"top1": 0.9}'
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
