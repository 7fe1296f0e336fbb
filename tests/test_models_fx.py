"""timm's FX feature-extraction path, torch.export and tracing (docs/model.md § Export).

The FX tests follow timm's own tests/test_models.py (test_model_forward_fx, test_model_backward_fx):
build a feature extractor that returns the graph's last node, in eval and in train mode, through
timm's wrapper (which honours `register_notrace_function` / `register_notrace_module`), and check
the output and the gradients. Here they are also held equal to the eager model.
"""

import pytest
import timm
import torch

import sf_mamba  # noqa: F401  (registers the models)

pytest.importorskip("torchvision")  # timm's FX feature extraction is torchvision's
from timm.models._features_fx import create_feature_extractor, get_graph_node_names  # noqa: E402

CASES = [  # (model, kwargs, input side): every scan design and aux layout on micro, one T-size
    ("sf_mamba_micro", {}, 64),
    ("sf_mamba_micro", {"aux_tokens": 2}, 64),
    ("sf_mamba_micro", {"aux_tokens": 1, "aux_init": "mean", "aux_discard": "stage_end"}, 64),
    ("sf_mamba_micro", {"scan": "uni"}, 64),
    ("sf_mamba_micro", {"scan": "bi_parallel", "match_params": True}, 64),
    ("sf_mamba_micro", {"scan": "cross4", "attention": False}, 64),
    ("sf_mamba_t", {"drop_path_rate": 0.0}, 64),
]
IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}" for name, kw, _ in CASES]
# The T-size backward traces and differentiates a 30M-parameter model twice (~40 s on 2 cores).
BACKWARD_CASES = [pytest.param(*case, marks=pytest.mark.slow) if case[0] == "sf_mamba_t" else case
                  for case in CASES]


def fx_model(model):
    """timm's `_create_fx_model`: a feature extractor that returns the last node of the graph."""
    train_nodes, eval_nodes = get_graph_node_names(model)
    node = train_nodes[-1] if model.training else eval_nodes[-1]
    assert node == (train_nodes[-1] if not model.training else eval_nodes[-1]) == "head"
    return create_feature_extractor(model, return_nodes=[node])


def only_output(outputs: dict) -> torch.Tensor:
    assert len(outputs) == 1
    return next(iter(outputs.values()))


@pytest.mark.parametrize("name,kwargs,side", CASES, ids=IDS)
def test_model_forward_fx(name, kwargs, side):
    model = timm.create_model(name, num_classes=7, **kwargs).eval()
    graph = fx_model(model)
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        out = only_output(graph(x))
        expected = model(x)
    assert out.shape == (2, 7)
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("name,kwargs,side", BACKWARD_CASES, ids=IDS)
def test_model_backward_fx(name, kwargs, side):
    model = timm.create_model(name, num_classes=7, **kwargs).train()
    graph = fx_model(model)
    x = torch.randn(2, 3, side, side)
    only_output(graph(x)).square().mean().backward()
    fx_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    params = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(fx_grads) == params, sorted(params - set(fx_grads))   # every parameter got a gradient
    model.zero_grad(set_to_none=True)
    model(x).square().mean().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(fx_grads[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("feature_cls", ["fx", "hook"])
def test_features_only_matches_forward_intermediates(feature_cls):
    """feature_info's module names pick the pre-downsample maps for both of timm's extractors that
    use them (under FX, "levels.i" alone would end at the downsample)."""
    x = torch.randn(2, 3, 64, 64)
    fx = timm.create_model("sf_mamba_micro", features_only=True, feature_cls=feature_cls).eval()
    plain = timm.create_model("sf_mamba_micro").eval()
    missing, unexpected = plain.load_state_dict(
        {k.split(".", 1)[1]: v for k, v in fx.state_dict().items()},  # drop "graph_module."/"body."
        strict=False)
    assert not unexpected and all(k.startswith(("norm.", "head.")) for k in missing)  # unused by the maps
    with torch.no_grad():
        fx_maps = fx(x)
        maps = plain.forward_intermediates(x, intermediates_only=True)
    assert [m.shape[1] for m in fx_maps] == fx.feature_info.channels() == [16, 32, 64, 128]
    for a, b in zip(fx_maps, maps, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_input_check_survives_fx_tracing():
    """The input check is a notrace function: it is one node of the graph and still raises."""
    graph = fx_model(timm.create_model("sf_mamba_micro").eval())
    assert any(getattr(node.target, "__name__", "") == "check_image_input" for node in graph.graph.nodes)
    with pytest.raises(ValueError, match="input has 1 channels, the model expects in_chans=3"):
        graph(torch.randn(1, 1, 64, 64))


def test_torch_export_with_a_dynamic_batch():
    """torch.export of the default (swap) model; the exported program is for inference (no_grad):
    the scan's autograd.Function is inlined, so it does not back-propagate."""
    model = timm.create_model("sf_mamba_micro", num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    program = torch.export.export(model, (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=64)}})
    exported = program.module()
    with torch.no_grad():
        for batch in (1, 3):
            xb = torch.randn(batch, 3, 64, 64)
            torch.testing.assert_close(exported(xb), model(xb), rtol=1e-5, atol=1e-6)


def test_torch_jit_trace_at_the_traced_size():
    """torch.jit.script is not supported (docs/model.md); jit.trace works for the traced input size."""
    model = timm.create_model("sf_mamba_micro", num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), pytest.warns(torch.jit.TracerWarning):
        traced = torch.jit.trace(model, x)
        torch.testing.assert_close(traced(x), model(x), rtol=1e-5, atol=1e-6)
