"Distillation terms (AT, PF, MF, SF) against independent computations, and where their gradients go."
import math

import pytest
import torch
import torch.nn.functional as F

from etc_nb.losses import (ConvLSTMCell, MFDistill, attention_map, attention_map_bytes, pairwise_loss,
                           pf_loss, pf_map, pixelwise_kd, pool_to, pooled_size, self_similarity, sf_loss)

torch.set_num_threads(1)


def test_attention_map_equals_double_loop():
    torch.manual_seed(0)
    a, b = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 1, 3)
    a[1, :, 1, 0] = 0                                          # a zero vector: similarity defined as 0
    M = attention_map(a, b)
    assert M.shape == (2, 4, 3)
    af, bf = a.flatten(2), b.flatten(2)
    for n in range(2):
        for i in range(4):
            for j in range(3):
                na, nb = af[n, :, i].norm(), bf[n, :, j].norm()
                ref = 0.0 if na == 0 else float(af[n, :, i] @ bf[n, :, j] / (na * nb))
                assert M[n, i, j].item() == pytest.approx(ref, abs=1e-6)


def test_attention_map_zero_vector_has_finite_gradient():
    a = torch.zeros(1, 4, 2, 2, requires_grad=True)
    attention_map(a, torch.randn(1, 4, 3, 3)).sum().backward()
    assert torch.isfinite(a.grad).all()


def test_pooled_size_bounds_and_never_upsamples():
    for sizes in [((97, 97),), ((193, 193), (97, 97)), ((8, 14),), ((3, 900),), ((900, 3), (1000, 5))]:
        for pool in (1, 7, 64, 1024):
            h, w = pooled_size(*sizes, max_positions=pool)
            assert 1 <= h <= min(s[0] for s in sizes) and 1 <= w <= min(s[1] for s in sizes)
            assert h * w <= pool
    assert pooled_size((97, 97)) == (32, 32)                  # default bound: 1024 positions
    assert attention_map_bytes((97, 97)) == 9409 ** 2 * 4     # Cityscapes 769 crop, stride 8, unpooled
    assert attention_map_bytes((97, 97), 1024) == 1024 ** 2 * 4


def test_pool_to_is_average_pooling():
    x = torch.randn(1, 2, 6, 9)
    assert torch.allclose(pool_to(x, (2, 3)), x.reshape(1, 2, 2, 3, 3, 3).mean((3, 5)), atol=1e-6)
    assert pool_to(x, (6, 9)) is x


def test_pf_zero_for_teacher_copy_positive_otherwise_and_gradients():
    torch.manual_seed(1)
    t_t, t_tk = (torch.randn(2, 4, 6, 10, requires_grad=True) for _ in range(2))
    assert pf_loss(t_t.detach(), t_tk.detach(), t_t, t_tk).item() == pytest.approx(0, abs=1e-12)
    s_t, s_tk = (torch.randn(2, 4, 6, 10, requires_grad=True) for _ in range(2))
    loss = pf_loss(s_t, s_tk, t_t, t_tk)
    loss.backward()
    assert loss > 0
    assert s_t.grad.abs().sum() > 0 and s_tk.grad.abs().sum() > 0
    assert t_t.grad is None and t_tk.grad is None


def test_pf_equals_direct_computation_with_different_strides():
    "Stride-4 student vs stride-8 teacher, pooled to 12 positions: an explicit reference computation."
    torch.manual_seed(2)
    s_t, s_tk = torch.randn(1, 3, 12, 16), torch.randn(1, 3, 12, 16)
    t_t, t_tk = torch.randn(1, 3, 6, 8), torch.randn(1, 3, 6, 8)
    size = pooled_size((12, 16), (6, 8), max_positions=12)
    assert size == (3, 4)

    def ref_map(z_t, z_tk):
        k = z_t.shape[-1] // 4
        p = [F.avg_pool2d(z.softmax(1), k) for z in (z_t, z_tk)]
        return F.cosine_similarity(p[0].flatten(2)[..., :, None], p[1].flatten(2)[..., None, :], dim=1)

    ref = (ref_map(s_t, s_tk) - ref_map(t_t, t_tk)).pow(2).mean()
    assert torch.allclose(pf_loss(s_t, s_tk, t_t, t_tk, pool=12), ref, atol=1e-6)
    assert pf_map(s_t, s_tk, size).shape == (1, 12, 12)


def test_convlstm_cell_equals_equations():
    torch.manual_seed(3)
    cell = ConvLSTMCell(1, 2, 3)
    x, h0, c0 = torch.randn(1, 1, 5, 5), torch.randn(1, 2, 5, 5), torch.randn(1, 2, 5, 5)
    h, c = cell(x, (h0, c0))
    z = F.conv2d(torch.cat([x, h0], 1), cell.gates.weight, cell.gates.bias, padding=1)
    i, f, o, g = z[:, 0:2], z[:, 2:4], z[:, 4:6], z[:, 6:8]
    c_ref = torch.sigmoid(f) * c0 + torch.sigmoid(i) * torch.tanh(g)
    assert torch.allclose(c, c_ref, atol=1e-6)
    assert torch.allclose(h, torch.sigmoid(o) * torch.tanh(c_ref), atol=1e-6)


def _frames(n, b, c, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.relu(torch.randn(b, c, h, w, generator=g)).requires_grad_() for _ in range(n)]


def test_mf_zero_for_teacher_copy_positive_otherwise_and_gradients():
    torch.manual_seed(4)
    mf = MFDistill()
    teacher = _frames(3, 2, 48, 6, 10, seed=0)                # stride 8, 48 channels
    student = _frames(3, 2, 16, 12, 20, seed=1)               # stride 4, 16 channels
    same, _ = mf([t.detach() for t in teacher], teacher)
    assert same.item() == pytest.approx(0, abs=1e-12)
    loss, reg = mf(student, teacher)
    assert loss > 0
    (loss + 0.1 * reg).backward()
    assert all(s.grad.abs().sum() > 0 for s in student)
    assert all(t.grad is None for t in teacher)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mf.parameters())


def test_mf_convlstm_is_shared():
    mf = MFDistill(hidden_size=4, kernel_size=3)
    params = list(mf.parameters())
    assert len(params) == 2 and sum(p.numel() for p in params) == (1 + 4) * 9 * 16 + 16
    a, b = _frames(3, 1, 8, 6, 6, seed=2), _frames(3, 1, 24, 6, 6, seed=3)
    # one encoder for both sides: swapping student and teacher gives the same loss
    assert torch.allclose(mf(a, b)[0], mf(b, a)[0])
    # the regulariser sees only the teacher's side, and trains that same ConvLSTM
    mf.zero_grad()
    mf([x.detach() for x in a], b)[1].backward()
    assert all(p.grad.abs().sum() > 0 for p in params) and all(x.grad is None for x in b)


def test_mf_clip_bounds_weights_and_regulariser_escapes_collapse():
    mf = MFDistill()
    assert mf.clip_value == pytest.approx(1 / math.sqrt(45))
    init = [p.clone() for p in mf.parameters()]
    mf.clip_()
    assert all(torch.equal(p, q) for p, q in zip(mf.parameters(), init))   # default init lies inside the range
    with torch.no_grad():
        for p in mf.parameters():
            p.fill_(5.0)
    mf.clip_()
    assert all(p.abs().max() <= mf.clip_value for p in mf.parameters())
    assert MFDistill(clip_value=0.01).clip_().lstm.gates.weight.abs().max() <= 0.01
    with torch.no_grad():
        for p in mf.parameters():
            p.zero_()                                          # the collapse point
    loss, reg = mf(_frames(2, 1, 8, 4, 4, seed=4), _frames(2, 1, 8, 4, 4, seed=5))
    assert loss.item() == 0 and reg.item() == 1
    reg.backward()
    assert mf.lstm.gates.bias.grad.abs().sum() > 0


def test_mf_pool_bounds_the_embedding():
    mf = MFDistill(pool=20)
    t, s = _frames(3, 1, 8, 12, 20, seed=6), _frames(3, 1, 4, 24, 40, seed=7)
    size = pooled_size((12, 20), max_positions=20)
    n = size[0] * size[1]
    assert n <= 20
    emb = mf.embed([self_similarity(x, size) for x in t])
    assert emb.shape == (1, 4, n, n)
    assert mf(s, t)[0] > 0


def test_self_similarity_is_pooled_attention_map():
    f = torch.randn(2, 5, 8, 8)
    ref = F.avg_pool2d(f, 2)
    assert torch.allclose(self_similarity(f, (4, 4)), attention_map(ref, ref), atol=1e-6)


def test_sf_terms():
    torch.manual_seed(5)
    s, t = torch.randn(2, 6, 4, 5, requires_grad=True), torch.randn(2, 6, 4, 5, requires_grad=True)
    for T in (1.0, 3.0):
        p, logq = (t / T).softmax(1), (s / T).log_softmax(1)
        ref = T * T * (p * (p.log() - logq)).sum(1).mean()
        assert torch.allclose(pixelwise_kd(s, t, T), ref, atol=1e-6)
    sf, tf = torch.randn(2, 8, 8, 10, requires_grad=True), torch.randn(2, 32, 4, 5, requires_grad=True)
    assert sf_loss(t.detach(), t, tf.detach(), tf).item() == pytest.approx(0, abs=1e-6)
    pair = pairwise_loss(sf, tf)
    ref_pair = (self_similarity(F.avg_pool2d(sf, 2)) - self_similarity(tf)).pow(2).mean()
    assert torch.allclose(pair, ref_pair, atol=1e-6)
    loss = sf_loss(s, t, sf, tf, T=2.0, kd_weight=10.0, pair_weight=1.0)
    assert torch.allclose(loss, 10 * pixelwise_kd(s, t, 2.0) + pair, atol=1e-6)
    loss.backward()
    assert loss > 0 and s.grad.abs().sum() > 0 and sf.grad.abs().sum() > 0
    assert t.grad is None and tf.grad is None


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="channels"):
        attention_map(torch.randn(1, 3, 2, 2), torch.randn(1, 4, 2, 2))
    with pytest.raises(ValueError, match="teacher_tk"):
        pf_loss(torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4), torch.randn(1, 3, 2, 4))
    with pytest.raises(ValueError, match="equally long"):
        MFDistill()([torch.randn(1, 2, 4, 4)], [])
    with pytest.raises(ValueError, match="state"):
        MFDistill(state="output")
