"""The training step's numbers, recorded before the method/engine refactor (issue 11) and kept since.

Each case trains 3 iterations through the real trainer (data pipeline, optimiser groups, schedule, EMA,
checkpoint) on the tiny synthetic benchmark with a real tiny zoo network, and compares every logged loss and a
checksum of the saved student, teacher and Rebuilder with the numbers recorded on the code before the refactor.
A refactor that changes what is learnt, in which order randomness is drawn, or which parameters get which lr
fails here.

The runs use one intra-op thread whatever the machine has: with AdamW's first steps (lr·sign(g) where g is
tiny) a last-bit difference from another thread count's summation order grows to ~1 % in three iterations.
At one thread the numbers are reproducible bit for bit; the comparison allows 1e-6 relative.
"""

from __future__ import annotations

import json

import pytest
import torch

from mfmseg.config import load_config
from mfmseg.engine.checkpoint import load_train_checkpoint
from mfmseg.engine.trainer import train

COMMON = ["train.max_iters=3", "train.eval_interval=-1", "train.checkpoint_interval=3", "train.panel_interval=0",
          "model.decoder_channels=16", "optim.warmup_iters=0", "uda.pseudo_threshold=0.08"]
FD = ["uda.fd.enabled=true", "uda.fd.cell_ratio=0.1", f"uda.fd.thing_classes={list(range(19))}"]
TINY_MFM = ["uda.mfm.enabled=true", "uda.mfm.embed_dim=32", "uda.mfm.num_heads=4", "uda.mfm.grid=4"]
CASES = {
    "dacs_fd": [*FD],
    "dacs_mfm": [*TINY_MFM],
    "mic": ["uda.mic.enabled=true", "uda.mic.block_size=16"],
    "hrda_fd_mfm": ["model.hrda.enabled=true", "model.hrda.hr_crop=[32,32]", "model.hrda.attention_embed_dim=16",
                    "model.hrda.detail_stride=[16,16]", *FD, *TINY_MFM],
    "effl0_mfm_both": ["model.name=daformer_efflite0", *TINY_MFM, "uda.mfm.domain=both",
                       "uda.mfm.freeze_decoder_bn=true"],
}

EXPECTED: dict[str, dict] = {  # recorded on 6676433 (before the refactor), OMP_NUM_THREADS=1
    "dacs_fd": {
        "losses": [
            {"loss_fd": 0.0019574419129639864, "loss_mix": 2.6616015434265137, "loss_src": 3.2951102256774902,
             "pseudo_q": 0.883544921875},
            {"loss_fd": 0.0434795543551445, "loss_mix": 2.496861219406128, "loss_src": 2.766561269760132,
             "pseudo_q": 0.6629638671875},
            {"loss_fd": 0.05825961381196976, "loss_mix": 2.2690227031707764, "loss_src": 2.665522336959839,
             "pseudo_q": 0.64306640625},
        ],
        "student": [4044.294064805327, 57863.24392890395],
        "teacher": [4093.1627753900993, 57846.00839038687],
        "rebuilder": [0.0, 0.0],
    },
    "dacs_mfm": {
        "losses": [
            {"loss_mfm": 2.176814317703247, "loss_mix": 2.6616015434265137, "loss_src": 3.2951102256774902,
             "pseudo_q": 0.883544921875},
            {"loss_mfm": 1.608604907989502, "loss_mix": 2.503506660461426, "loss_src": 2.8234410285949707,
             "pseudo_q": 0.6947021484375},
            {"loss_mfm": 1.8152391910552979, "loss_mix": 2.418745756149292, "loss_src": 2.7813611030578613,
             "pseudo_q": 0.7684326171875},
        ],
        "student": [4008.5954163855886, 57828.532887034366],
        "teacher": [4093.5452724124516, 57845.22269655949],
        "rebuilder": [691.7519051023426, 5854.612766637349],
    },
    "mic": {
        "losses": [
            {"loss_mic": 2.3235061168670654, "loss_mix": 2.6616015434265137, "loss_src": 3.2951102256774902,
             "pseudo_q": 0.883544921875},
            {"loss_mic": 1.6988986730575562, "loss_mix": 2.5039801597595215, "loss_src": 2.7863337993621826,
             "pseudo_q": 0.6636962890625},
            {"loss_mic": 1.7558207511901855, "loss_mix": 2.3729400634765625, "loss_src": 2.7097702026367188,
             "pseudo_q": 0.6947021484375},
        ],
        "student": [4006.5709017165636, 57828.17072655169],
        "teacher": [4092.4678473197355, 57845.54328894985],
        "rebuilder": [0.0, 0.0],
    },
    "hrda_fd_mfm": {
        "losses": [
            {"loss_fd": 0.0032877959311008453, "loss_mfm": 2.4316534996032715, "loss_mix": 2.7273192405700684,
             "loss_src": 3.219665765762329, "pseudo_q": 0.9051513671875},
            {"loss_fd": 0.03435778245329857, "loss_mfm": 2.1421279907226562, "loss_mix": 2.5781195163726807,
             "loss_src": 2.959186553955078, "pseudo_q": 0.885986328125},
            {"loss_fd": 0.047684445977211, "loss_mfm": 2.0357367992401123, "loss_mix": 2.6558351516723633,
             "loss_src": 2.8704352378845215, "pseudo_q": 0.927001953125},
        ],
        "student": [3956.8185895413194, 58224.86659574795],
        "teacher": [4061.8001762737226, 58266.15495159678],
        "rebuilder": [671.7180536857646, 5560.764259651794],
    },
    "effl0_mfm_both": {
        "losses": [
            {"loss_mfm": 2.2547974586486816, "loss_mfm_src": 3.2954025268554688, "loss_mix": 2.807790517807007,
             "loss_src": 3.239015579223633, "pseudo_q": 0.9166259765625},
            {"loss_mfm": 2.220870018005371, "loss_mfm_src": 2.846107244491577, "loss_mix": 2.569772243499756,
             "loss_src": 2.743220806121826, "pseudo_q": 0.92724609375},
            {"loss_mfm": 2.231618642807007, "loss_mfm_src": 2.755256175994873, "loss_mix": 2.4548099040985107,
             "loss_src": 2.6774773597717285, "pseudo_q": 0.9150390625},
        ],
        "student": [34878.38606634572, 144698.914332408],
        "teacher": [39180.166703872535, 148533.0632271577],
        "rebuilder": [1588.5343024235924, 10368.46511620779],
    },
}


def _checksum(state: dict | None) -> list[float]:
    """(sum, sum of |x|) over every floating tensor, in float64."""
    if state is None:
        return [0.0, 0.0]
    tensors = [t.double() for t in state.values() if t.is_floating_point()]
    return [float(sum(t.sum() for t in tensors)), float(sum(t.abs().sum() for t in tensors))]


def run_case(name: str, work_dir, tiny_overrides) -> dict:
    train(load_config("synthetic_dacs", tiny_overrides(work_dir, *COMMON, *CASES[name])))
    rows = [json.loads(x) for x in (work_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [{k: v for k, v in r.items() if k.startswith("loss") or k == "pseudo_q"}
              for r in rows if r["kind"] == "train"]
    ckpt = load_train_checkpoint(work_dir / "latest.pth")
    return {"losses": losses, **{part: _checksum(ckpt[part]) for part in ("student", "teacher", "rebuilder")}}


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", list(CASES))
def test_losses_and_parameters_are_those_recorded_before_the_refactor(name, tmp_path, tiny_overrides, one_thread):
    got, want = run_case(name, tmp_path / name, tiny_overrides), EXPECTED[name]
    assert [sorted(r) for r in got["losses"]] == [sorted(r) for r in want["losses"]]
    # Recorded on an AVX-512 CPU; on an AVX2 one the same code differs by <= 2e-7 before the first update and, from
    # the second iteration on, by up to 1.3e-4 in losses that are small differences of large terms (HRDA's FD,
    # MFM on both domains), measured. A behaviour change moves these far more.
    for i, (g, w) in enumerate(zip(got["losses"], want["losses"])):
        for key in w:
            rel = 1e-5 if i == 0 else 1e-3
            assert g[key] == pytest.approx(w[key], rel=rel, abs=1e-12), f"iteration {i + 1}: {key}"
    for part in ("student", "teacher", "rebuilder"):
        assert got[part] == pytest.approx(want[part], rel=1e-5, abs=1e-12), part
