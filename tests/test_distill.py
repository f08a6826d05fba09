"""One- and two-step models end to end: `ddpmctl distill` from a trained run, `train --method`
from scratch, sampling them, and the mistakes a user can make."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

import ddpmctl
from ddpmctl import registry
from ddpmctl.methods import MeanFlow, MeanFlowLoss
from ddpmctl.pipeline import start_from
from ddpmctl.processes import Flow
from tests.conftest import TINY_SETTINGS, assert_clean_error, assert_ok, cli_here


def samples_of(folder, stem):
    with np.load(folder / f"{stem}.npz") as f:
        return f["samples"], json.loads(str(f["record"]))


def test_distill_writes_a_run_that_records_its_teacher_and_samples_in_one_step(tiny_run, tmp_path):
    r = cli_here("distill", tiny_run, "--method", "consistency", "--name", "one", "--steps", "60", "--runs-dir", tmp_path, "--checkpoint-every", "30")
    assert_ok(r)
    run = tmp_path / "one"
    record = json.loads((run / "config.json").read_text())
    assert record["config"]["teacher"] == str(tiny_run) and record["config"]["method"] == "consistency"
    assert record["plugins"]["method"]["name"] == "consistency"
    teacher = json.loads((tiny_run / "config.json").read_text())["config"]
    assert all(record["config"][k] == teacher[k] for k in ("data", "network_options", "process", "schedule_options", "batch_size"))
    with Image.open(run / "few-step.png") as picture:  # the one-step map beside the teacher's ODE: two square panels
        assert picture.size[0] > 1.6 * picture.size[1]

    out = tmp_path / "s"
    assert_ok(cli_here("sample", run, "--n", "300", "--out", out))  # the default: the few-step sampler, one step
    one, rec = samples_of(out, "few-step-1steps-seed0")
    assert rec["nfe"] == 1 and rec["sampler"] == "few-step" and one.shape == (300, 2) and np.isfinite(one).all()
    assert_ok(cli_here("sample", run, "--n", "300", "--batch-size", "64", "--out", tmp_path / "again"))
    assert np.allclose(samples_of(tmp_path / "again", "few-step-1steps-seed0")[0], one, atol=1e-6), "a deterministic function of the seed"
    assert_ok(cli_here("sample", run, "--n", "300", "--steps", "2", "--out", out))
    two, rec = samples_of(out, "few-step-2steps-seed0")
    assert rec["nfe"] == 2 and not np.allclose(two, one)

    # Resumed as `train` resumes: it continues from step 60 with the same teacher and method.
    assert_ok(cli_here("distill", "--resume", run, "--steps", "90"))
    assert (run / "latest").read_text().strip() == "step-00000090.safetensors"


def test_consistency_distillation_starts_from_a_student_equal_to_its_teacher(tiny_run, tmp_path):
    """At stage 0 every target is the teacher's x0_hat, which the student (its copy) matches
    exactly: the loss is 0 there and its gradient must stay finite."""
    run = ddpmctl.distill(tiny_run, "consistency", name="cd", runs_dir=tmp_path, steps=10, checkpoint_every=10,
                          method_options={"target": "teacher"}, precision="fp32")
    assert run.step == 10 and torch.isfinite(run.sample(n=64).x).all()


def test_a_distilled_run_is_shorter_and_slower_than_its_teacher_unless_told(tiny_run):
    from ddpmctl.session import DISTILL_LR, DISTILL_STEPS, distill_settings

    teacher = json.loads((tiny_run / "config.json").read_text())["config"]
    flags, base = distill_settings(tiny_run, "consistency")
    assert base["steps"] == round(DISTILL_STEPS * teacher["steps"]) < teacher["steps"]
    assert base["lr"] == DISTILL_LR * teacher["lr"] and base["batch_size"] == teacher["batch_size"]
    assert flags["name"] == f"{tiny_run.name}-consistency" and flags["runs_dir"] == tiny_run.parent


def test_distill_mistakes_are_one_sentence(tiny_run, tmp_path):
    assert_clean_error(cli_here("distill", tmp_path / "nowhere", "--method", "consistency"), "nowhere")
    assert_clean_error(cli_here("distill", tiny_run, "--runs-dir", tmp_path), "method")
    assert_clean_error(cli_here("distill", tiny_run, "--method", "sharpen", "--runs-dir", tmp_path), "sharpen")
    assert_clean_error(cli_here("distill", tiny_run, "--method", "meanflow", "--runs-dir", tmp_path), "flow")
    assert_clean_error(cli_here("distill", tiny_run, "--method", "consistency", "-o", "method.q=0.5", "--runs-dir", tmp_path), "q")
    assert_clean_error(cli_here("distill", tiny_run, "--method", "consistency", "--resume", tmp_path), "resume")
    assert not any(tmp_path.iterdir()), "nothing was written"


def test_meanflow_trains_from_scratch_and_jumps_in_one_step(tmp_path):
    run = ddpmctl.train(data="8gaussians", process="flow", method="meanflow", name="mf", runs_dir=tmp_path,
                        **{**TINY_SETTINGS, "steps": 60, "schedule_options": {}})
    assert run.model.net.embed.mlp2 is not None, "the network reads t and t - r"
    a = run.sample(n=200, seed=1)
    b = run.sample(n=200, seed=1, batch_size=32)
    assert a.record["sampler"] == "few-step" and a.record["nfe"] == 1
    torch.testing.assert_close(a.x, b.x)
    assert not torch.allclose(run.sample(n=200, seed=1, steps=2).x, a.x)


def test_consistency_training_from_scratch_takes_edm_and_samples_in_one_step(tmp_path):
    run = ddpmctl.train(data="8gaussians", method="consistency", name="ct", runs_dir=tmp_path,
                        **{**TINY_SETTINGS, "steps": 40, "schedule_options": {}})
    assert run.config.process == "edm" and run.config.teacher is None, "no --process: the method's own"
    a = run.sample(n=200, seed=1)
    assert a.record["sampler"] == "few-step" and a.record["nfe"] == 1
    torch.testing.assert_close(a.x, run.sample(n=200, seed=1, batch_size=32).x)


def test_a_two_level_network_started_from_a_one_level_teacher_is_the_teacher():
    """MeanFlow from a flow run: the second noise level's embedding starts at zero."""
    one = registry.build("network", "unet", {"channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [4]}, data_shape=(1, 8, 8))
    two = registry.build("network", "unet", {"channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [4]}, data_shape=(1, 8, 8), noise_inputs=2)
    start_from(two, one)
    x, t = torch.randn(4, 1, 8, 8), torch.rand(4) * 1000
    torch.testing.assert_close(two(x, torch.stack([t, torch.rand(4) * 500], 1)), one(x, t))


def test_meanflow_loss_trains_a_unet_through_forward_mode_derivatives():
    net = registry.build("network", "unet", {"channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [4]},
                         data_shape=(1, 8, 8), num_classes=3, noise_inputs=2)
    loss = MeanFlowLoss(MeanFlow(r_fraction=0.5), Flow(), 0.1, 3)
    value = loss(net, torch.randn(8, 1, 8, 8).clamp(-1, 1), torch.randint(0, 3, (8,)), torch.Generator().manual_seed(0))
    value.backward()
    assert torch.isfinite(value) and all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters() if p.requires_grad)
