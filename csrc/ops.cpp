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

// One AdamW step for one param group. The model owns p and g, so they arrive as lists; the optimizer owns its
// state, so it is flat: parameter t's moments are exp_avg[off_t : off_t + n_t] (and the same in exp_avg_sq), its
// step count is steps[t]. Slots start on 16-element (64-byte) boundaries, the alignment the allocator gives p
// and g, so all four streams are aligned together; off_{t+1} = off_t + round_up(n_t, 16), the rule
// minillm/kernels/cpp.py uses to lay the buffers out. A parameter whose grad is None is skipped and its step
// is not counted, as in torch.
//
// Why this shape (see minillm/kernels/cpp.py): five lists of 52 tensors cost ~30 us per call just to cross from
// Python to C++; two lists and three tensors cost ~13 us.
//
// Threads: one contiguous range of the group's elements per thread (at::parallel_for splits [0, total) into
// num_threads equal pieces); each thread walks the tensors that overlap its piece. No chunk list, one parallel
// region per step, and a step too small to be worth waking a second thread runs on this one.
constexpr int64_t kSlotAlign = 16;

template <typename T>
struct AdamwSeg {
  T* p;
  const T* g;
  T *m, *v;
  int64_t begin, n;  // this tensor's first element in the group's [0, total) range, and its size
  mlk::AdamwCoef<T> coef;
};

template <typename T>
void adamw_group(const std::vector<AdamwSeg<T>>& segs, int64_t total) {
  const int64_t grain = total < (1 << 16) ? total : (1 << 15);
  at::parallel_for(0, total, grain, [&](int64_t b, int64_t e) {
    size_t s = 0;
    while (s < segs.size() && segs[s].begin + segs[s].n <= b) ++s;  // first tensor overlapping [b, e)
    for (; s < segs.size() && segs[s].begin < e; ++s) {
      const AdamwSeg<T>& x = segs[s];
      const int64_t i0 = std::max(b, x.begin) - x.begin, i1 = std::min(e, x.begin + x.n) - x.begin;
      mlk::adamw_kernel(x.p + i0, x.g + i0, x.m + i0, x.v + i0, i1 - i0, x.coef);
    }
  });
}

template <typename T>
void adamw_typed(at::TensorList params, const c10::List<c10::optional<at::Tensor>>& grads, at::Tensor& exp_avg,
                 at::Tensor& exp_avg_sq, float* steps, double lr, double beta1, double beta2, double eps,
                 double wd) {
  std::vector<AdamwSeg<T>> segs;
  segs.reserve(params.size());
  std::vector<at::Tensor> keep;  // contiguous copies of non-contiguous grads, alive until the update is done
  T *m = exp_avg.data_ptr<T>(), *v = exp_avg_sq.data_ptr<T>();
  int64_t off = 0, total = 0;
  double last_step = -1;
  mlk::AdamwCoef<T> coef{T(1.0 - lr * wd), T(1.0 - beta1), T(beta2), T(1.0 - beta2), T(eps), T(0), T(0)};
  for (size_t t = 0; t < params.size(); ++t) {
    const at::Tensor& p = params[t];
    const int64_t n = p.numel();
    TORCH_CHECK(off + n <= exp_avg.numel(), "adamw_: the state buffers are smaller than the parameters");
    const c10::optional<at::Tensor> g = grads[t];
    if (g.has_value() && g->defined()) {
      TORCH_CHECK(p.is_contiguous() && p.scalar_type() == exp_avg.scalar_type() && p.device().is_cpu(),
                  "adamw_: parameter ", t, " must be a contiguous CPU tensor of the state's dtype");
      TORCH_CHECK(g->scalar_type() == p.scalar_type() && g->numel() == n && !g->is_sparse(),
                  "adamw_: grad ", t, " must be dense with the parameter's dtype and size");
      const T* gp;
      if (g->is_contiguous()) {
        gp = g->data_ptr<T>();
      } else {
        keep.push_back(g->contiguous());
        gp = keep.back().data_ptr<T>();
      }
      const double step = steps[t] + 1.0f;  // counted below, once every tensor has passed its checks
      if (step != last_step) {  // every tensor of a group normally has the same step: compute the powers once
        last_step = step;
        coef.step_size = T(lr / (1.0 - std::pow(beta1, step)));
        coef.inv_bc2_sqrt = T(1.0 / std::sqrt(1.0 - std::pow(beta2, step)));
      }
      segs.push_back({p.data_ptr<T>(), gp, m + off, v + off, total, n, coef});
      total += n;
    }
    off += (n + kSlotAlign - 1) / kSlotAlign * kSlotAlign;
  }
  for (size_t t = 0; t < params.size(); ++t) {
    const c10::optional<at::Tensor> g = grads[t];
    if (g.has_value() && g->defined()) steps[t] += 1.0f;
  }
  if (total > 0) adamw_group<T>(segs, total);
}

void adamw_(at::TensorList params, const c10::List<c10::optional<at::Tensor>>& grads, at::Tensor exp_avg,
            at::Tensor exp_avg_sq, at::Tensor steps, double lr, double beta1, double beta2, double eps,
            double weight_decay) {
  TORCH_CHECK(grads.size() == params.size() && steps.numel() == (int64_t)params.size(),
              "adamw_: params, grads and steps differ in length");
  TORCH_CHECK(exp_avg.is_contiguous() && exp_avg_sq.is_contiguous() && exp_avg.sizes() == exp_avg_sq.sizes() &&
                  exp_avg.scalar_type() == exp_avg_sq.scalar_type() && exp_avg.device().is_cpu(),
              "adamw_: exp_avg and exp_avg_sq must be contiguous CPU buffers of one size and dtype");
  TORCH_CHECK(steps.scalar_type() == at::kFloat && steps.is_contiguous() && steps.device().is_cpu(),
              "adamw_: steps must be a contiguous float32 CPU tensor");
  float* st = steps.data_ptr<float>();
  if (exp_avg.scalar_type() == at::kFloat) {
    adamw_typed<float>(params, grads, exp_avg, exp_avg_sq, st, lr, beta1, beta2, eps, weight_decay);
  } else {
    TORCH_CHECK(exp_avg.scalar_type() == at::kDouble, "adamw_: float32/float64 only");
    adamw_typed<double>(params, grads, exp_avg, exp_avg_sq, st, lr, beta1, beta2, eps, weight_decay);
  }
}

// The memory roof for adamw_ (see stream_kernel): p += g, m += g, v += g over flat float32 tensors, threads
// split exactly as adamw_ splits a group.
void stream_roof_(at::Tensor p, at::Tensor g, at::Tensor m, at::Tensor v) {
  for (const at::Tensor* x : {&p, &g, &m, &v})
    TORCH_CHECK(x->device().is_cpu() && x->is_contiguous() && x->scalar_type() == at::kFloat &&
                    x->numel() == p.numel(), "stream_roof_: four contiguous float32 CPU tensors of one size");
  float *pp = p.data_ptr<float>(), *mp = m.data_ptr<float>(), *vp = v.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  const int64_t total = p.numel(), grain = total < (1 << 16) ? total : (1 << 15);
  at::parallel_for(0, total, grain, [&](int64_t b, int64_t e) {
    mlk::stream_kernel(pp + b, gp + b, mp + b, vp + b, e - b);
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
  m.def("adamw_(Tensor(a!)[] params, Tensor?[] grads, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, "
        "Tensor(d!) steps, float lr, float beta1, float beta2, float eps, float weight_decay) -> ()");
  m.def("stream_roof_(Tensor(a!) p, Tensor g, Tensor(b!) m, Tensor(c!) v) -> ()");
}

TORCH_LIBRARY_IMPL(minillm, CPU, m) {
  m.impl("softmax_fwd", &softmax_fwd);
  m.impl("softmax_fwd_out", [](const at::Tensor& x, double s, bool c, at::Tensor out) { softmax_fwd_out(x, s, c, out); });
  m.impl("softmax_bwd", &softmax_bwd);
  m.impl("attn_fwd", &attn_fwd);
  m.impl("attn_bwd", &attn_bwd);
  m.impl("adamw_", &adamw_);
  m.impl("stream_roof_", &stream_roof_);
}
