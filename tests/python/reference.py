"""The yardsticks of the Python tests: the fp64 SDPA model of a causal / windowed / documents pattern
(the reference) and the same model in fp32 (the plain same-precision implementation), and
FlashAttention's rule: max|got - fp64| <= factor * max|plain - fp64| + floor (floor as the C++ tests':
1e-5, 2^-8 or 2^-11 of max(1, max|ref|) for fp32, bf16, fp16)."""
import torch

FLOORS = {torch.float32: 1e-5, torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}


def allowed(n_q, n_k, q_pos, k_pos, causal=False, window=(-1, -1), cu_seqlens=None):
    """[n_q, n_k] bool: which (query, key) pairs attend, from global positions."""
    qp, kp = q_pos.view(-1, 1), k_pos.view(1, -1)
    ok = torch.ones(n_q, n_k, dtype=torch.bool)
    if causal:
        ok &= kp <= qp
    left, right = window
    if left >= 0:
        ok &= kp >= qp - left
    if right >= 0:
        ok &= kp <= qp + right
    if cu_seqlens is not None:
        b = torch.as_tensor(cu_seqlens)
        ok &= torch.bucketize(qp, b, right=True) == torch.bucketize(kp, b, right=True)
    return ok


def sdpa(q, k, v, mask, dtype):
    """O [B, S, Hq, D] of bshd inputs in `dtype`, GQA by repeating kv heads; rows without keys give 0."""
    q, k, v = (x.to(dtype).transpose(1, 2) for x in (q, k, v))
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    s = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return (p @ v).transpose(1, 2)


def rule(name, got, plain, ref, dtype, factor):
    got, plain, ref = (x.detach().double() for x in (got, plain, ref))
    err, base = (got - ref).abs().max().item(), (plain - ref).abs().max().item()
    floor = FLOORS[dtype] * max(1.0, ref.abs().max().item())
    bound = factor * base + floor
    assert err <= bound, f"{name}: max|got - fp64| = {err:.3g} exceeds {factor} * {base:.3g} + {floor:.3g} = {bound:.3g}"
    return err
