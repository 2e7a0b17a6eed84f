// cuda_binding.cpp — registers the CUDA kernels (csrc/*.cu, plain launcher API in kernels_cuda.h) as the CUDA
// implementations of the `minillm` ops that csrc/ops.cpp defines. Built only when torch has CUDA
// (minillm/kernels/build.py); the .cu files themselves compile without torch.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "kernels_cuda.h"

namespace {

int dtype_code(const at::Tensor& t) {
  TORCH_CHECK(t.is_cuda() && t.is_contiguous(), "expected a contiguous CUDA tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16,
              "the cuda kernels take float32 or bfloat16, got ", t.scalar_type());
  return t.scalar_type() == at::kBFloat16 ? MLK_BF16 : MLK_F32;
}

void check(int err, const char* what) {
  TORCH_CHECK(err == 0, what, " failed: ", cudaGetErrorString(static_cast<cudaError_t>(err)));
}

void softmax_fwd_out(const at::Tensor& x, double scale, bool causal, at::Tensor out) {
  const int dt = dtype_code(x);
  TORCH_CHECK(out.sizes() == x.sizes() && out.scalar_type() == x.scalar_type() && out.is_contiguous(), "bad out");
  const int64_t S = x.dim() ? x.size(-1) : 1, R = S ? x.numel() / S : 0, Tq = x.dim() >= 2 ? x.size(-2) : 1;
  check(mlk_softmax_fwd(x.data_ptr(), out.data_ptr(), R, S, Tq, (float)scale, causal, dt,
                        c10::cuda::getCurrentCUDAStream()),
        "softmax_fwd");
}

at::Tensor softmax_fwd(const at::Tensor& x, double scale, bool causal) {
  at::Tensor y = at::empty_like(x);
  softmax_fwd_out(x, scale, causal, y);
  return y;
}

at::Tensor softmax_bwd(const at::Tensor& y, const at::Tensor& dy, double scale) {
  const int dt = dtype_code(y);
  TORCH_CHECK(dtype_code(dy) == dt && dy.sizes() == y.sizes(), "y and dy must match");
  at::Tensor dx = at::empty_like(y);
  const int64_t S = y.dim() ? y.size(-1) : 1, R = S ? y.numel() / S : 0;
  check(mlk_softmax_bwd(y.data_ptr(), dy.data_ptr(), dx.data_ptr(), R, S, (float)scale, dt,
                        c10::cuda::getCurrentCUDAStream()),
        "softmax_bwd");
  return dx;
}

const bool* kpm_ptr(const c10::optional<at::Tensor>& kpm, const at::Tensor& q, int64_t Tk) {
  if (!kpm.has_value()) return nullptr;
  TORCH_CHECK(kpm->is_cuda() && kpm->scalar_type() == at::kBool && kpm->is_contiguous() && kpm->dim() == 2 &&
                  kpm->size(0) == q.size(0) && kpm->size(1) == Tk,
              "key_padding_mask must be a contiguous bool (B, Tk) CUDA tensor");
  return kpm->data_ptr<bool>();
}

std::tuple<at::Tensor, at::Tensor> attn_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                            bool causal, const c10::optional<at::Tensor>& kpm) {
  const int dt = dtype_code(q);
  TORCH_CHECK(dtype_code(k) == dt && dtype_code(v) == dt && q.dim() == 4 && k.sizes() == v.sizes(), "bad q/k/v");
  TORCH_CHECK(mlk_attn_supports_head_dim(q.size(3)), "cuda attention supports head dims 32, 64, 128");
  at::Tensor o = at::empty_like(q);
  at::Tensor lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  check(mlk_attn_fwd(q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), lse.data_ptr<float>(),
                     q.size(0) * q.size(1), q.size(1), q.size(2), k.size(2), q.size(3), causal,
                     kpm_ptr(kpm, q, k.size(2)), dt, c10::cuda::getCurrentCUDAStream()),
        "attn_fwd");
  return {o, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attn_bwd(const at::Tensor& q, const at::Tensor& k,
                                                        const at::Tensor& v, const at::Tensor& o,
                                                        const at::Tensor& dout, const at::Tensor& lse, bool causal,
                                                        const c10::optional<at::Tensor>& kpm) {
  const int dt = dtype_code(q);
  TORCH_CHECK(dtype_code(dout) == dt && dtype_code(o) == dt && lse.scalar_type() == at::kFloat, "bad inputs");
  at::Tensor dq = at::zeros_like(q), dk = at::zeros_like(k), dv = at::zeros_like(v);
  at::Tensor delta = at::empty_like(lse);
  check(mlk_attn_bwd(q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), dout.data_ptr(), lse.data_ptr<float>(),
                     delta.data_ptr<float>(), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), q.size(0) * q.size(1),
                     q.size(1), q.size(2), k.size(2), q.size(3), causal, kpm_ptr(kpm, q, k.size(2)), dt,
                     c10::cuda::getCurrentCUDAStream()),
        "attn_bwd");
  return {dq, dk, dv};
}

// Same contract as the CPU adamw_ in ops.cpp: p and g as lists, the group's exp_avg / exp_avg_sq flat with
// parameter t's slot at off_t (slots rounded up to 16 elements), steps one float32 per parameter on the CPU.
void adamw_(at::TensorList params, const c10::List<c10::optional<at::Tensor>>& grads, at::Tensor exp_avg,
            at::Tensor exp_avg_sq, at::Tensor steps, double lr, double beta1, double beta2, double eps,
            double weight_decay) {
  TORCH_CHECK(grads.size() == params.size() && steps.numel() == (int64_t)params.size(),
              "cuda adamw_: params, grads and steps differ in length");
  for (const at::Tensor* x : {&exp_avg, &exp_avg_sq})
    TORCH_CHECK(x->is_cuda() && x->is_contiguous() && x->scalar_type() == at::kFloat && x->numel() == exp_avg.numel(),
                "cuda adamw_: exp_avg and exp_avg_sq must be contiguous float32 CUDA buffers of one size");
  TORCH_CHECK(steps.device().is_cpu() && steps.scalar_type() == at::kFloat && steps.is_contiguous(),
              "cuda adamw_: steps must be a contiguous float32 CPU tensor");
  std::vector<float*> p, m, v;
  std::vector<const float*> g;
  std::vector<int64_t> numel;
  std::vector<float> step_size, bc2_sqrt;
  float *m0 = exp_avg.data_ptr<float>(), *v0 = exp_avg_sq.data_ptr<float>(), *st = steps.data_ptr<float>();
  int64_t off = 0;
  for (size_t t = 0; t < params.size(); ++t) {
    const int64_t n = params[t].numel();
    TORCH_CHECK(off + n <= exp_avg.numel(), "cuda adamw_: the state buffers are smaller than the parameters");
    const c10::optional<at::Tensor> gt = grads[t];
    if (gt.has_value() && gt->defined()) {
      for (const at::Tensor* x : {&params[t], &*gt})
        TORCH_CHECK(x->is_cuda() && x->is_contiguous() && x->scalar_type() == at::kFloat && x->numel() == n,
                    "cuda adamw_: contiguous float32 CUDA parameters and grads only");
      st[t] += 1.0f;
      step_size.push_back((float)(lr / (1.0 - std::pow(beta1, (double)st[t]))));
      bc2_sqrt.push_back((float)std::sqrt(1.0 - std::pow(beta2, (double)st[t])));
      p.push_back(params[t].data_ptr<float>()), g.push_back(gt->data_ptr<float>());
      m.push_back(m0 + off), v.push_back(v0 + off), numel.push_back(n);
    }
    off += (n + 15) / 16 * 16;
  }
  if (p.empty()) return;
  check(mlk_adamw(p.data(), g.data(), m.data(), v.data(), numel.data(), step_size.data(), bc2_sqrt.data(),
                  (int)p.size(), (float)(1.0 - lr * weight_decay), (float)(1.0 - beta1), (float)beta2,
                  (float)(1.0 - beta2), (float)eps, c10::cuda::getCurrentCUDAStream()),
        "adamw_");
}

}  // namespace

#ifdef MINILLM_AOT_MODULE  // ahead-of-time build (setup.py): importing `minillm._C_cuda` loads the CUDA ops
#include <Python.h>
extern "C" PyObject* PyInit__C_cuda(void) {
  static PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C_cuda", "minillm CUDA kernels (ops in torch.ops.minillm)", -1};
  return PyModule_Create(&def);
}
#endif

TORCH_LIBRARY_IMPL(minillm, CUDA, m) {
  m.impl("softmax_fwd", &softmax_fwd);
  m.impl("softmax_fwd_out", &softmax_fwd_out);
  m.impl("softmax_bwd", &softmax_bwd);
  m.impl("attn_fwd", &attn_fwd);
  m.impl("attn_bwd", &attn_bwd);
  m.impl("adamw_", &adamw_);
}
