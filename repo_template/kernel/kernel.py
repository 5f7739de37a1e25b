"""The kernel of this lab: RMSNorm over the last dimension.

    out = x * rsqrt(mean(x**2, -1) + eps) * weight

This is the one file an experiment changes. On a GPU, harness.py compiles CUDA_SOURCE
with nvcc for that GPU (every UPPERCASE integer constant below reaches it as a -D macro)
and calls its `kernel_launch`; on a machine without a GPU it calls `cpu_kernel`. The
contract and the rules are in program.md.
"""

import torch

# Threads per block of the CUDA kernel (one block per row); a power of two.
THREADS = 256

CUDA_SOURCE = r"""
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Baseline: one block per row. The sum of squares in float32 over a strided loop, a
// shared-memory tree reduction, then a second pass over the row to scale and store.
template <typename T>
__global__ void rmsnorm_kernel(T* out, const T* x, const T* w, long long cols, float eps) {
  __shared__ float partial[THREADS];
  const T* xr = x + blockIdx.x * cols;
  T* orow = out + blockIdx.x * cols;
  float ss = 0.f;
  for (long long c = threadIdx.x; c < cols; c += blockDim.x) {
    const float f = to_float(xr[c]);
    ss += f * f;
  }
  partial[threadIdx.x] = ss;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
    __syncthreads();
  }
  const float r = rsqrtf(partial[0] / (float)cols + eps);
  for (long long c = threadIdx.x; c < cols; c += blockDim.x) {
    orow[c] = from_float<T>(to_float(xr[c]) * r * to_float(w[c]));
  }
}

// dtype: 0 float32, 1 float16, 2 bfloat16. Returns 0, or the CUDA error of the launch.
extern "C" int kernel_launch(void* out, const void* x, const void* weight, long long rows,
                             long long cols, float eps, int dtype, void* stream) {
  if (rows == 0 || cols == 0) return 0;
  cudaStream_t s = (cudaStream_t)stream;
  const dim3 grid((unsigned)rows);
  switch (dtype) {
    case 0:
      rmsnorm_kernel<float><<<grid, THREADS, 0, s>>>((float*)out, (const float*)x,
                                                     (const float*)weight, cols, eps);
      break;
    case 1:
      rmsnorm_kernel<__half><<<grid, THREADS, 0, s>>>((__half*)out, (const __half*)x,
                                                      (const __half*)weight, cols, eps);
      break;
    case 2:
      rmsnorm_kernel<__nv_bfloat16><<<grid, THREADS, 0, s>>>(
          (__nv_bfloat16*)out, (const __nv_bfloat16*)x, (const __nv_bfloat16*)weight, cols,
          eps);
      break;
    default:
      return (int)cudaErrorInvalidValue;
  }
  return (int)cudaGetLastError();
}
"""


def cpu_kernel(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, eps: float) -> None:
    """The CPU path: write RMSNorm(x) * weight into `out` (same shape and dtype as x)."""
    xf = x.float()
    r = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    out.copy_(xf * r * weight.float())
