"""Random selective-scan inputs with mamba_ssm's test distributions (notes/kernels.md §1.5)."""

import torch


def make_scan_inputs(batch=2, channels=4, d_state=4, length=12, groups=None, dtype=torch.float32,
                     requires_grad=False, seed=0, s4d_a=False):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    u = rand(batch, channels, length)
    delta = (0.5 * torch.rand(batch, channels, length, generator=g, dtype=torch.float64)).to(dtype)
    if s4d_a:  # S4D-real A = -(1..N): exercises decays close to zero
        A = -torch.arange(1, d_state + 1, dtype=torch.float64).expand(channels, d_state).clone()
    else:
        A = -0.5 * torch.rand(channels, d_state, generator=g, dtype=torch.float64)
    bc_shape = (batch, d_state, length) if groups is None else (batch, groups, d_state, length)
    B, C = rand(*bc_shape), rand(*bc_shape)
    D = rand(channels)
    z = rand(batch, channels, length)
    delta_bias = (0.5 * torch.rand(channels, generator=g, dtype=torch.float64))
    tensors = dict(u=u, delta=delta, A=A.to(dtype if dtype == torch.float64 else torch.float32),
                   B=B, C=C, D=D.to(torch.float64 if dtype == torch.float64 else torch.float32), z=z,
                   delta_bias=delta_bias.to(torch.float64 if dtype == torch.float64 else torch.float32))
    if requires_grad:
        for t in tensors.values():
            t.requires_grad_(True)
    return tensors


def grads_of(fn, inputs, grad_out):
    """Run fn(**inputs), backprop grad_out, return (output, {name: grad})."""
    inputs = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    out = fn(**inputs)
    out.backward(grad_out)
    return out.detach(), {k: v.grad for k, v in inputs.items()}
