// PyTorch binding of the SiLU-and-mul CUDA kernel: checks, strides, stream, and op
// registration. The kernel itself (silu_and_mul_cuda/silu_and_mul.cu) sees no PyTorch
// types.

#include "torch_binding.h"

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <cstdint>

extern "C" int autolab_silu_mul_launch(void* out, const void* gate, const void* up, int64_t rows,
                                       int64_t d, int64_t gate_stride, int64_t up_stride,
                                       int64_t out_stride, int dtype, int block, int unroll,
                                       int stream_hint, cudaStream_t stream);

namespace {

int dtype_code(at::ScalarType t) {
  switch (t) {
    case at::ScalarType::Float: return 0;
    case at::ScalarType::Half: return 1;
    case at::ScalarType::BFloat16: return 2;
    default: TORCH_CHECK(false, "silu_and_mul: unsupported dtype ", t);
  }
}

// The stride between consecutive rows of t seen as (numel / size(-1), size(-1)): the
// last dimension must be dense and the leading ones must nest (a slice of the last
// dimension of a contiguous tensor qualifies).
int64_t row_stride(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() >= 1, "silu_and_mul: ", name, " must have at least one dimension");
  TORCH_CHECK(t.size(-1) <= 1 || t.stride(-1) == 1,
              "silu_and_mul: ", name, " must be dense in its last dimension");
  if (t.dim() == 1) return t.size(0);
  const int64_t rs = t.stride(-2);
  for (int64_t i = t.dim() - 3; i >= 0; --i) {
    TORCH_CHECK(t.size(i) <= 1 || t.stride(i) == t.stride(i + 1) * t.size(i + 1),
                "silu_and_mul: ", name, " must have nested leading dimensions");
  }
  return rs;
}

void run(at::Tensor& out, const at::Tensor& gate, const at::Tensor& up, int64_t block,
         int64_t unroll, int64_t stream_hint) {
  TORCH_CHECK(gate.is_cuda() && up.is_cuda() && out.is_cuda(),
              "silu_and_mul: tensors must be CUDA tensors");
  TORCH_CHECK(gate.device() == up.device() && gate.device() == out.device(),
              "silu_and_mul: tensors must be on one device");
  TORCH_CHECK(gate.scalar_type() == up.scalar_type() && gate.scalar_type() == out.scalar_type(),
              "silu_and_mul: tensors must have one dtype");
  TORCH_CHECK(gate.sizes() == up.sizes() && gate.sizes() == out.sizes(),
              "silu_and_mul: gate, up and out must have one shape");
  const int64_t d = gate.dim() == 0 ? 1 : gate.size(-1);
  const int64_t rows = d == 0 ? 0 : gate.numel() / d;
  const int64_t gs = row_stride(gate, "gate"), us = row_stride(up, "up");
  const int64_t os = row_stride(out, "out");
  const c10::cuda::CUDAGuard guard(gate.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(gate.device().index()).stream();
  const int err = autolab_silu_mul_launch(
      out.data_ptr(), gate.data_ptr(), up.data_ptr(), rows, d, gs, us, os,
      dtype_code(gate.scalar_type()), static_cast<int>(block), static_cast<int>(unroll),
      static_cast<int>(stream_hint), stream);
  TORCH_CHECK(err == 0, "silu_and_mul: kernel launch failed: ",
              cudaGetErrorString(static_cast<cudaError_t>(err)));
}

}  // namespace

void silu_mul_tuned(at::Tensor& out, const at::Tensor& gate, const at::Tensor& up,
                    int64_t block, int64_t unroll, int64_t stream_hint) {
  run(out, gate, up, block, unroll, stream_hint);
}

void silu_mul(at::Tensor& out, const at::Tensor& gate, const at::Tensor& up) {
  run(out, gate, up, 0, 0, 0);
}

void silu_and_mul(at::Tensor& out, const at::Tensor& input) {
  TORCH_CHECK(input.dim() >= 1 && input.size(-1) % 2 == 0,
              "silu_and_mul: input.size(-1) must be even");
  const int64_t d = input.size(-1) / 2;
  run(out, input.narrow(-1, 0, d), input.narrow(-1, d, d), 0, 0, 0);
}

// TORCH_EXTENSION_NAME is the op namespace, passed by the build; the extra macro level
// expands it before TORCH_LIBRARY pastes it into names.
#define AUTOLAB_TORCH_LIBRARY(NAME, MODULE) TORCH_LIBRARY(NAME, MODULE)

AUTOLAB_TORCH_LIBRARY(TORCH_EXTENSION_NAME, m) {
  m.def("silu_and_mul(Tensor! out, Tensor input) -> ()");
  m.impl("silu_and_mul", c10::DispatchKey::CUDA, &silu_and_mul);
  m.def("silu_mul(Tensor! out, Tensor gate, Tensor up) -> ()");
  m.impl("silu_mul", c10::DispatchKey::CUDA, &silu_mul);
  m.def(
      "silu_mul_tuned(Tensor! out, Tensor gate, Tensor up, int block, int unroll, "
      "int stream_hint) -> ()");
  m.impl("silu_mul_tuned", c10::DispatchKey::CUDA, &silu_mul_tuned);
}
