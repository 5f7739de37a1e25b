// PyTorch binding of the RMSNorm CUDA kernel: checks, stream, and op registration.
// The kernel itself (rmsnorm_cuda/rmsnorm.cu) sees no PyTorch types.

#include "torch_binding.h"

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <cstdint>

extern "C" int autolab_rmsnorm_launch(void* out, const void* x, const void* w, int64_t rows,
                                      int64_t cols, float eps, int dtype, int tpr, int vpt,
                                      int block, int stream_hint, cudaStream_t stream);

namespace {

int dtype_code(at::ScalarType t) {
  switch (t) {
    case at::ScalarType::Float: return 0;
    case at::ScalarType::Half: return 1;
    case at::ScalarType::BFloat16: return 2;
    default: TORCH_CHECK(false, "rms_norm: unsupported dtype ", t);
  }
}

}  // namespace

void rms_norm_tuned(at::Tensor& out, const at::Tensor& input, const at::Tensor& weight,
                    double eps, int64_t tpr, int64_t vpt, int64_t block, int64_t stream_hint) {
  TORCH_CHECK(input.is_cuda() && weight.is_cuda() && out.is_cuda(),
              "rms_norm: input, weight and out must be CUDA tensors");
  TORCH_CHECK(input.device() == weight.device() && input.device() == out.device(),
              "rms_norm: input, weight and out must be on one device");
  TORCH_CHECK(input.scalar_type() == weight.scalar_type() &&
                  input.scalar_type() == out.scalar_type(),
              "rms_norm: input, weight and out must have one dtype");
  TORCH_CHECK(input.dim() >= 1, "rms_norm: input must have at least one dimension");
  const int64_t cols = input.size(-1);
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == cols,
              "rms_norm: weight must be 1-D with input.size(-1) elements");
  TORCH_CHECK(out.sizes() == input.sizes(), "rms_norm: out must have input's shape");
  TORCH_CHECK(input.is_contiguous() && weight.is_contiguous() && out.is_contiguous(),
              "rms_norm: input, weight and out must be contiguous");
  const int64_t rows = cols == 0 ? 0 : input.numel() / cols;
  const c10::cuda::CUDAGuard guard(input.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(input.device().index()).stream();
  const int err = autolab_rmsnorm_launch(
      out.data_ptr(), input.data_ptr(), weight.data_ptr(), rows, cols, static_cast<float>(eps),
      dtype_code(input.scalar_type()), static_cast<int>(tpr), static_cast<int>(vpt),
      static_cast<int>(block), static_cast<int>(stream_hint), stream);
  TORCH_CHECK(err == 0, "rms_norm: kernel launch failed: ",
              cudaGetErrorString(static_cast<cudaError_t>(err)));
}

void rms_norm(at::Tensor& out, const at::Tensor& input, const at::Tensor& weight, double eps) {
  rms_norm_tuned(out, input, weight, eps, 0, 0, 0, 0);
}

// TORCH_EXTENSION_NAME is the op namespace, passed by the build; the extra macro level
// expands it before TORCH_LIBRARY pastes it into names.
#define AUTOLAB_TORCH_LIBRARY(NAME, MODULE) TORCH_LIBRARY(NAME, MODULE)

AUTOLAB_TORCH_LIBRARY(TORCH_EXTENSION_NAME, m) {
  m.def("rms_norm(Tensor! out, Tensor input, Tensor weight, float eps) -> ()");
  m.impl("rms_norm", c10::DispatchKey::CUDA, &rms_norm);
  m.def(
      "rms_norm_tuned(Tensor! out, Tensor input, Tensor weight, float eps, int tpr, int vpt, "
      "int block, int stream_hint) -> ()");
  m.impl("rms_norm_tuned", c10::DispatchKey::CUDA, &rms_norm_tuned);
}
