// ops.cpp — the torch side of the CPU kernels: checks, threading, and registration as torch custom ops.
//
// The kernels (softmax.cpp, attention.cpp, adamw.cpp) see raw pointers and are single-threaded; here we
// split their work across threads with at::parallel_for (OpenMP underneath) and register each op in the
// `minillm` namespace (torch.ops.minillm.*) with TORCH_LIBRARY, so torch.compile and torch.library
// tooling see them as real ops (fake kernels are registered from Python, in minillm/kernels/cpp.py).
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "kernels_cpu.h"

namespace {

void check_input(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              " must be float32 or float64, got ", t.scalar_type());
}

// y = softmax(scale * x) over the last dim; causal masks the last two dims (T, S) as in the reference.
void softmax_fwd_out(const at::Tensor& x, double scale, bool causal, at::Tensor& y) {
  check_input(x, "x");
  TORCH_CHECK(y.sizes() == x.sizes() && y.is_contiguous() && y.scalar_type() == x.scalar_type(), "bad out tensor");
  const int64_t S = x.dim() ? x.size(-1) : 1, R = S ? x.numel() / S : 0;
  const int64_t Tq = x.dim() >= 2 ? x.size(-2) : 1;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(S, 1));
  if (x.scalar_type() == at::kFloat) {
    const float* xp = x.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    at::parallel_for(0, R, grain, [&](int64_t r0, int64_t r1) {
      mlk::softmax_fwd_kernel(xp, yp, r0, r1, S, Tq, float(scale), causal);
    });
  } else {
    const double* xp = x.data_ptr<double>();
    double* yp = y.data_ptr<double>();
    at::parallel_for(0, R, grain, [&](int64_t r0, int64_t r1) {
      mlk::softmax_fwd_kernel(xp, yp, r0, r1, S, Tq, scale, causal);
    });
  }
}

at::Tensor softmax_fwd(const at::Tensor& x, double scale, bool causal) {
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  softmax_fwd_out(x, scale, causal, y);
  return y;
}

at::Tensor softmax_bwd(const at::Tensor& y, const at::Tensor& dy, double scale) {
  check_input(y, "y");
  check_input(dy, "dy");
  TORCH_CHECK(y.sizes() == dy.sizes() && y.scalar_type() == dy.scalar_type(), "y and dy must match");
  at::Tensor dx = at::empty_like(y);
  const int64_t S = y.dim() ? y.size(-1) : 1, R = S ? y.numel() / S : 0;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(S, 1));
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "softmax_bwd", [&] {
    const scalar_t *yp = y.data_ptr<scalar_t>(), *dyp = dy.data_ptr<scalar_t>();
    scalar_t* dxp = dx.data_ptr<scalar_t>();
    at::parallel_for(0, R, grain, [&](int64_t r0, int64_t r1) {
      mlk::softmax_bwd_kernel(yp, dyp, dxp, r0, r1, S, scalar_t(scale));
    });
  });
  return dx;
}

mlk::AttnShape attn_shape(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal,
                          const c10::optional<at::Tensor>& kpm) {
  check_input(q, "q");
  check_input(k, "k");
  check_input(v, "v");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "q, k, v must be (B, H, T, D)");
  TORCH_CHECK(k.sizes() == v.sizes(), "k and v must have the same shape");
  TORCH_CHECK(q.size(0) == k.size(0) && q.size(1) == k.size(1) && q.size(3) == k.size(3), "q and k disagree");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(), "dtypes differ");
  mlk::AttnShape sh{q.size(0) * q.size(1), q.size(1), q.size(2), k.size(2), q.size(3), causal, nullptr};
  if (kpm.has_value()) {
    TORCH_CHECK(kpm->scalar_type() == at::kBool && kpm->is_contiguous() && kpm->dim() == 2 &&
                    kpm->size(0) == q.size(0) && kpm->size(1) == sh.Tk,
                "key_padding_mask must be a contiguous bool (B, Tk) tensor");
    sh.kpm = kpm->data_ptr<bool>();
  }
  return sh;
}

std::tuple<at::Tensor, at::Tensor> attn_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                            bool causal, const c10::optional<at::Tensor>& kpm) {
  const mlk::AttnShape sh = attn_shape(q, k, v, causal, kpm);
  at::Tensor o = at::empty_like(q);
  at::Tensor lse = at::empty({q.size(0), q.size(1), sh.Tq}, q.options());
  const int64_t tasks = sh.BH * mlk::attn_num_q_tiles(sh.Tq);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "attn_fwd", [&] {
    const scalar_t *qp = q.data_ptr<scalar_t>(), *kp = k.data_ptr<scalar_t>(), *vp = v.data_ptr<scalar_t>();
    scalar_t *op = o.data_ptr<scalar_t>(), *lp = lse.data_ptr<scalar_t>();
    at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
      mlk::attn_fwd_kernel(qp, kp, vp, op, lp, sh, t0, t1);
    });
  });
  return {o, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attn_bwd(const at::Tensor& q, const at::Tensor& k,
                                                        const at::Tensor& v, const at::Tensor& o,
                                                        const at::Tensor& dout, const at::Tensor& lse, bool causal,
                                                        const c10::optional<at::Tensor>& kpm) {
  const mlk::AttnShape sh = attn_shape(q, k, v, causal, kpm);
  check_input(o, "o");
  check_input(dout, "dout");
  check_input(lse, "lse");
  at::Tensor dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "attn_bwd", [&] {
    const scalar_t *qp = q.data_ptr<scalar_t>(), *kp = k.data_ptr<scalar_t>(), *vp = v.data_ptr<scalar_t>();
    const scalar_t *op = o.data_ptr<scalar_t>(), *dop = dout.data_ptr<scalar_t>(), *lp = lse.data_ptr<scalar_t>();
    scalar_t *dqp = dq.data_ptr<scalar_t>(), *dkp = dk.data_ptr<scalar_t>(), *dvp = dv.data_ptr<scalar_t>();
    at::parallel_for(0, sh.BH, 1, [&](int64_t h0, int64_t h1) {
      mlk::attn_bwd_kernel(qp, kp, vp, op, dop, lp, dqp, dkp, dvp, sh, h0, h1);
    });
  });
  return {dq, dk, dv};
}

// One fused AdamW step over every tensor in the lists: steps are incremented here, bias corrections are per
// tensor (as in torch), and the work is cut into chunks of at most 32K elements spread across threads.
void adamw_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
            at::TensorList steps, double lr, double beta1, double beta2, double eps, double weight_decay) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n && steps.size() == n,
              "adamw_: lists differ in length");
  struct Chunk { size_t t; int64_t begin, len; };
  std::vector<Chunk> chunks;
  std::vector<at::Tensor> g(grads.begin(), grads.end());  // contiguous copies only where needed
  std::vector<double> step_size(n), bc2_sqrt(n);
  int64_t total = 0;
  constexpr int64_t CH = 1 << 15;
  for (size_t t = 0; t < n; ++t) {
    const at::Tensor& p = params[t];
    if (!g[t].is_contiguous()) g[t] = g[t].contiguous();
    TORCH_CHECK(p.device().is_cpu() && p.is_contiguous() && exp_avgs[t].is_contiguous() &&
                    exp_avg_sqs[t].is_contiguous(),
                "adamw_: CPU contiguous tensors only");
    TORCH_CHECK(grads[t].scalar_type() == p.scalar_type() && exp_avgs[t].scalar_type() == p.scalar_type() &&
                    exp_avg_sqs[t].scalar_type() == p.scalar_type() && grads[t].numel() == p.numel(),
                "adamw_: grad/state dtype or size differs from the parameter");
    TORCH_CHECK(p.scalar_type() == at::kFloat || p.scalar_type() == at::kDouble, "adamw_: float32/float64 only");
    TORCH_CHECK(steps[t].scalar_type() == at::kFloat && steps[t].numel() == 1 && steps[t].device().is_cpu(),
                "adamw_: step must be a float32 CPU scalar tensor");
    float* st = steps[t].data_ptr<float>();
    *st += 1.0f;
    const double step = *st;
    step_size[t] = lr / (1.0 - std::pow(beta1, step));
    bc2_sqrt[t] = std::sqrt(1.0 - std::pow(beta2, step));
    for (int64_t b = 0; b < p.numel(); b += CH) chunks.push_back({t, b, std::min(CH, p.numel() - b)});
    total += p.numel();
  }
  // Small steps run on this thread: waking a thread team costs more than updating a few thousand floats.
  const int64_t grain = total < (1 << 16) ? (int64_t)chunks.size() + 1 : 1;
  at::parallel_for(0, (int64_t)chunks.size(), grain, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const Chunk& ch = chunks[c];
      const at::Tensor& p = params[ch.t];
      if (p.scalar_type() == at::kFloat) {
        mlk::adamw_kernel(p.data_ptr<float>() + ch.begin, g[ch.t].data_ptr<float>() + ch.begin,
                       exp_avgs[ch.t].data_ptr<float>() + ch.begin, exp_avg_sqs[ch.t].data_ptr<float>() + ch.begin,
                       ch.len, float(lr), float(beta1), float(beta2), float(eps), float(weight_decay),
                       float(step_size[ch.t]), float(bc2_sqrt[ch.t]));
      } else {
        mlk::adamw_kernel(p.data_ptr<double>() + ch.begin, g[ch.t].data_ptr<double>() + ch.begin,
                       exp_avgs[ch.t].data_ptr<double>() + ch.begin, exp_avg_sqs[ch.t].data_ptr<double>() + ch.begin,
                       ch.len, lr, beta1, beta2, eps, weight_decay, step_size[ch.t], bc2_sqrt[ch.t]);
      }
    }
  });
}

}  // namespace

#ifdef MINILLM_AOT_MODULE  // ahead-of-time build (setup.py): importing `minillm._C_cpu` loads the ops
#include <Python.h>
extern "C" PyObject* PyInit__C_cpu(void) {
  static PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C_cpu", "minillm C++ kernels (ops in torch.ops.minillm)", -1};
  return PyModule_Create(&def);
}
#endif

TORCH_LIBRARY(minillm, m) {
  m.def("softmax_fwd(Tensor x, float scale, bool causal) -> Tensor");
  m.def("softmax_fwd_out(Tensor x, float scale, bool causal, Tensor(a!) out) -> ()");
  m.def("softmax_bwd(Tensor y, Tensor dy, float scale) -> Tensor");
  m.def("attn_fwd(Tensor q, Tensor k, Tensor v, bool causal, Tensor? key_padding_mask) -> (Tensor, Tensor)");
  m.def("attn_bwd(Tensor q, Tensor k, Tensor v, Tensor o, Tensor dout, Tensor lse, bool causal, "
        "Tensor? key_padding_mask) -> (Tensor, Tensor, Tensor)");
  m.def("adamw_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
        "Tensor(d!)[] steps, float lr, float beta1, float beta2, float eps, float weight_decay) -> ()");
}

TORCH_LIBRARY_IMPL(minillm, CPU, m) {
  m.impl("softmax_fwd", &softmax_fwd);
  m.impl("softmax_fwd_out", [](const at::Tensor& x, double s, bool c, at::Tensor out) { softmax_fwd_out(x, s, c, out); });
  m.impl("softmax_bwd", &softmax_bwd);
  m.impl("attn_fwd", &attn_fwd);
  m.impl("attn_bwd", &attn_bwd);
  m.impl("adamw_", &adamw_);
}
