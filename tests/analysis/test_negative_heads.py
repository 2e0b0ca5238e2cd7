"""Negative-head detection on gemma-3-270m: a planted copy-suppression head is found first and the model is
restored afterwards; IOI prompts, anti-induction and self-repair give the real model's numbers; the study
runs end to end, writes its files and loads back; its config and command line read heads either way."""

import argparse
import json

import pytest
import torch

from steerlens.analysis import (
    CopySuppressionConfig,
    CopySuppressionReport,
    anti_induction,
    find_negative_heads,
    ioi_prompts,
    ov_ranks,
    planted_suppression_head,
    self_repair,
    token_set,
)
from steerlens.analysis.copy_suppression import register, run
from steerlens.analysis.ioi import NAMES, TEMPLATES, single_token_words
from steerlens.analysis.results import jsonable
from steerlens.errors import SteerlensError


def test_planted_suppression_head_is_ranked_first_and_removed_cleanly(gemma):
    sample = token_set(gemma, 250, seed=11)  # <= d_head tokens: the least-squares OV fit is exact
    attn = gemma.lens.blocks[14].attn
    before = attn.W_O.data.clone()
    probe = torch.tensor([gemma.tokenize("The stone bridge and the iron bridge")[0]])
    logits_before = gemma.lens(probe)
    with planted_suppression_head(gemma, 14, 2, sample):
        ov = ov_ranks(gemma, 14, 2, sample)
        assert ov.suppression.top1 >= 0.9 and ov.copying.top10 == 0.0
        neg = find_negative_heads(gemma, methods=("ov",), token_sample=sample)
        assert neg.top(1) == [(14, 2)]
        assert not torch.equal(attn.W_O.data, before)
    assert torch.equal(attn.W_O.data, before)
    assert torch.equal(gemma.lens(probe), logits_before)
    assert ov_ranks(gemma, 14, 2, sample).suppression.top1 < 0.5  # the real head is no suppressor


def test_ioi_prompts_are_seeded_single_token_and_solved_by_the_model(gemma):
    batches = ioi_prompts(gemma, 10, seed=2)
    assert [b.texts for b in batches] == [b.texts for b in ioi_prompts(gemma, 10, seed=2)]
    assert sum(len(b.texts) for b in batches) == 10
    assert single_token_words(gemma.tokenizer, NAMES) == list(NAMES)
    b = batches[0]
    assert b.tokens.shape == b.abc_tokens.shape and (b.io != b.s).all()
    assert b.texts[0].startswith("When") and b.texts[0].endswith("to")
    last = gemma.lens(b.tokens)[:, -1]
    assert ((last.gather(-1, b.io[:, None]) - last.gather(-1, b.s[:, None])) > 0).float().mean() >= 0.5


def test_anti_induction_and_self_repair_on_gemma(gemma):
    ai = anti_induction(gemma, n=2, length=12)
    assert ai.induction_attention.shape == (gemma.cfg.n_layers, gemma.cfg.n_heads)
    assert ai.induction_attention.max() > 0.3  # gemma-3-270m has induction heads
    batches = ioi_prompts(gemma, 6, seed=0, templates=TEMPLATES[:2])
    sr = self_repair(gemma, batches, n_name_movers=2)
    assert sr.logit_diff_clean > 0
    for l, h in sr.name_movers:
        assert sr.clean[l, h] > 0 and sr.share[l, h] == 0.0
    assert sr.logit_diff_ablated < sr.logit_diff_clean
    assert sr.figure().data


@pytest.mark.slow
def test_study_end_to_end_writes_metrics_and_figures_and_loads_back(gemma, tmp_path):
    cfg = CopySuppressionConfig(
        n_tokens=200, vocab_tokens=10, n_sequences=3, seq_len=16, max_positions=4, n_ioi=4
    )  # the smallest sizes that run every stage: direct effects are 4 positions x 72 heads of full softmaxes
    report = run(gemma, cfg)
    path = report.save(tmp_path)
    data = json.loads(path.read_text())
    s = data["summary"]
    assert s["head"] == "L{}H{}".format(*report.head) and report.head == report.negative_heads.top(1)[0]
    assert 0.0 <= s["ov_suppression"]["top10"] <= 1.0 and s["additivity_error"] < 1e-4
    assert data["settings"]["n_tokens"] == 200 and data["settings"]["head_chosen_by"] == "find_negative_heads"
    assert set(data["negative_heads"]["scores"]) == {"copy_dla", "ioi", "ov", "entropy"}
    for name in report.figures():
        assert (tmp_path / f"{name}.html").exists()
    (sec,) = report.sections()
    assert (sec.id, sec.title) == ("copy_suppression", "Copy suppression: negative heads")
    assert sec.numbers["head"] == s["head"] and set(sec.figures) == set(report.figures()) and sec.tables
    back = CopySuppressionReport.load(tmp_path)
    assert back.config == cfg and back.head == report.head and back.settings == report.settings
    assert jsonable(back.summary()) == jsonable(report.summary())
    assert back.sections()[0].numbers == sec.numbers
    assert back.ov.ranks_suppression.size == 0  # per-token ranks are not saved
    with pytest.raises(SteerlensError, match="steerlens copy-suppression --out"):
        CopySuppressionReport.load(tmp_path / "nothing")


def test_config_reads_a_head_either_way_and_round_trips():
    assert CopySuppressionConfig(head="L10H7").head == CopySuppressionConfig(head="10.7").head == (10, 7)
    assert CopySuppressionConfig(head=(3, 1)).head == (3, 1) and CopySuppressionConfig().head is None
    with pytest.raises(SteerlensError, match=r"'ten': expected LAYER\.HEAD"):
        CopySuppressionConfig(head="ten")
    cfg = CopySuppressionConfig.quick(head="L2H3", seed=4)
    assert CopySuppressionConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    sizes = (cfg.n_tokens, cfg.vocab_tokens, cfg.n_sequences, cfg.seq_len, cfg.max_positions, cfg.n_ioi)
    assert sizes == (300, 20, 4, 32, 16, 8) and cfg.head == (2, 3) and cfg.seed == 4


def test_command_line_flags_come_from_the_config():
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["copy-suppression", "--model", "gpt2", "--head", "L10H7", "--out", "x"])
    assert args.model == "gpt2" and args.head == "L10H7" and callable(args.func)
    assert CopySuppressionConfig.from_args(args) == CopySuppressionConfig(head=(10, 7))
    args = parser.parse_args(["copy-suppression", "--n-tokens", "50", "--variant", "mlp0", "--quick"])
    assert (args.n_tokens, args.variant, args.quick, args.head) == (50, "mlp0", True, None)
    with pytest.raises(SystemExit):
        parser.parse_args(["copy-suppression", "--variant", "mlp1"])
