"""Every command line turns an expected error (config, data, checkpoint, evaluation,
output) into one line on stderr, ``<prog>: error: <message>``, and exit status 2; an
unexpected one keeps its traceback. In-process through each ``main(argv)``; one
subprocess runs the real thing under a file-size limit (the tests run as root, where
chmod does not make a directory unwritable)."""

import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import mmssl
from mmssl import __main__ as mmssl_main
from mmssl.train.checkpoint import WEIGHTS, list_checkpoints
from mmssl.cli import make_shards, pretrain, seed_sweep, zero_shot
from mmssl.cli.errors import one_line
from mmssl.data.stream import DataError
from mmssl.train.trainer import Pretrainer
from tests.conftest import write_image

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")
TINY_JOINT = str(REPO / "configs" / "tiny_joint.yaml")
STEPS = ["train.steps=2", "train.checkpoint_every=1", "train.log_every=1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny run with checkpoints step_1 and step_2 (copy it before changing it)."""
    run = tmp_path_factory.mktemp("trained")
    torch.set_num_threads(1)
    Pretrainer(mmssl.load_config(TINY, STEPS), run).fit()
    return run


@pytest.fixture
def inputs(trained, tmp_path) -> dict[str, Path]:
    """Bad inputs for the commands, by name."""
    corrupt = Path(shutil.copytree(list_checkpoints(trained)[-1], tmp_path / "corrupt"))
    (corrupt / WEIGHTS).write_bytes((corrupt / WEIGHTS).read_bytes()[:1000])
    other = Path(shutil.copytree(list_checkpoints(trained)[-1], tmp_path / "other_config"))
    config = yaml.safe_load((other / "config.yaml").read_text())
    config["modalities"]["text"]["width"] = 48
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    broken = tmp_path / "folder"
    for i, name in enumerate(["red_circle", "blue_star"]):
        (broken / name).mkdir(parents=True)
        write_image(broken / name / "a.png", i)
    (broken / "blue_star" / "broken.png").write_bytes(b"nope")
    write_image(tmp_path / "a.png", 0)
    (tmp_path / "one.csv").write_text("filepath,title\na.png,a red circle\n")
    (tmp_path / "latin1.csv").write_bytes("filepath,title\na.png,caf\xe9\n".encode("latin-1"))
    (tmp_path / "a_file").write_text("not a directory")
    return {"tmp": tmp_path, "run": trained, "corrupt": corrupt, "other": other, "folder": broken}


CASES = [
    # (command, argv with {name} from inputs, what the one line says)
    (pretrain, [TINY, "--output-dir", "{tmp}/out", "train.stpes=2"], "'train.stpes': unknown key"),
    (pretrain, [TINY, "--output-dir", "{tmp}/out", "objectives.image_text.data.source=csv",
                "objectives.image_text.data.path={tmp}/one.csv", "objectives.image_text.data.columns={{image: filepath, text: title}}"],
     "stream 'image_text': 1 samples is fewer than one batch of 16"),
    (pretrain, [TINY, "--output-dir", "{tmp}/out", "modalities.image.views.channel_shift=-0.1"],
     "'modalities.image': views.channel_shift must be in [0, 1]"),
    (pretrain, [TINY_JOINT, "--output-dir", "{tmp}/out", "modalities.graph.views.per_view=5"],
     "'modalities.graph': views.per_view must be in [1, 4], got 5"),
    (pretrain, [TINY, "--output-dir", "{tmp}/out", "world.shared_attribute_prob=2"],
     "world.shared_attribute_prob must be in [0, 1] or null, got 2.0"),
    (pretrain, [TINY, "--output-dir", "{tmp}/out", "--resume", "{tmp}/nothing"], "no checkpoint at {tmp}/nothing"),
    (pretrain, [TINY, "--output-dir", "{tmp}/a_file"], "output directory {tmp}/a_file is not writable: File exists"),
    (zero_shot, ["--checkpoint", "{corrupt}", "--modality", "image"], "{corrupt}/model.safetensors is unreadable: "),
    (zero_shot, ["--checkpoint", "{other}", "--modality", "image"],
     "checkpoint {other} does not fit the model built from its config.yaml (saved with another config?): tensors differ: "),
    (zero_shot, ["--checkpoint", "{run}", "--modality", "smell"], "checkpoint has no modality 'smell'"),
    (zero_shot, ["--checkpoint", "{run}", "--modality", "image", "--data", "folder:{folder}", "--on-error", "fail"], "broken.png"),
    (seed_sweep, [TINY, "--seeds", "0", "--output-dir", "{tmp}/sweep", "train.stepz=2"], "'train.stepz'"),
    (seed_sweep, [TINY, "--seeds", "0", "--output-dir", "{tmp}/sweep", "--baseline", "{tmp}/none"], "--baseline {tmp}/none is not a directory"),
    (make_shards, ["{tmp}/one.csv", "--output", "{tmp}/shards", "--file-column", "audio"], "no column ['audio']"),
    (make_shards, ["{tmp}/latin1.csv", "--output", "{tmp}/shards"], "{tmp}/latin1.csv -> {tmp}/shards: 'utf-8' codec can't decode"),
    (mmssl_main, ["new-plugin", "Bad Name", "--output", "{tmp}"], "plugin name must be a lower-case Python identifier"),
]
PROGS = {pretrain: "mmssl-pretrain", zero_shot: "mmssl-zero-shot", seed_sweep: "mmssl-seed-sweep",
         make_shards: "mmssl-make-shards", mmssl_main: "python -m mmssl"}


@pytest.mark.parametrize("command, argv, says", CASES, ids=[f"{PROGS[c]}-{says[:30]}" for c, _, says in CASES])
def test_an_expected_error_is_one_line_and_status_2(command, argv, says, inputs, capsys):
    code = command.main([arg.format(**inputs) for arg in argv])
    err = capsys.readouterr().err
    prog = PROGS[command]
    errors = [line for line in err.splitlines() if line.startswith(f"{prog}: error: ")]
    assert code == 2, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert len(errors) == 1 and errors[0] == err.splitlines()[-1], err[-2000:]
    assert says.format(**inputs) in errors[0]


def test_an_unexpected_error_keeps_its_traceback(monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(pretrain, "Pretrainer", broken)
    with pytest.raises(RuntimeError, match="a bug"):  # not turned into a line: Python prints its traceback
        pretrain.main([TINY, "--output-dir", str(tmp_path / "out")])


def test_a_loader_workers_error_is_one_line_without_the_workers_traceback():
    """torch re-raises a DataLoader worker's exception with the worker's traceback in
    its message; the line keeps the message and says which worker."""
    from torch._utils import ExceptionWrapper

    try:
        raise DataError("stream 'image_text': bad sample at a.png: cannot identify image file")
    except DataError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 1")
    with pytest.raises(DataError) as info:
        wrapped.reraise()
    assert "Traceback" in str(info.value)
    assert one_line(info.value) == "stream 'image_text': bad sample at a.png: cannot identify image file (in loader worker 1)"


def test_a_full_disk_at_a_save_keeps_the_previous_checkpoint_and_says_so_in_one_line(trained, tmp_path):
    """The real command in a subprocess whose file-size limit (RLIMIT_FSIZE) fails the
    write of step 3's trainer state after its weights, as a full disk would."""
    run = Path(shutil.copytree(trained, tmp_path / "run"))
    before = mmssl.load_pretrained(run).state_dict()
    limit = (list_checkpoints(run)[-1] / WEIGHTS).stat().st_size + 4096

    def limit_file_size() -> None:  # in the child: a write past the limit fails with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    proc = subprocess.run(
        [sys.executable, "tools/pretrain.py", TINY, "--output-dir", str(run), *STEPS, "train.steps=3", "train.threads=1"],
        capture_output=True, text=True, cwd=REPO, preexec_fn=limit_file_size,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        f"mmssl-pretrain: error: cannot save checkpoint {run / 'checkpoints' / 'step_00000003'}: File too large; "
        "the checkpoints saved before are intact (step_00000001, step_00000002)"
    )
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000001", "step_00000002"]  # no debris
    after = mmssl.load_pretrained(run).state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in after)
