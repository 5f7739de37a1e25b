// SiLU-and-mul: out = silu(gate) * up, with silu(g) = g / (1 + exp(-g)).
//
// Memory-bound: the floor is one read of gate and up and one write of out. Each thread
// loads UNROLL 16-byte packs of gate and of up (all loads issued before the first use),
// computes in float32 and stores UNROLL packs; each output element is rounded once.
// gate and up are rows with their own row strides, so the same kernel serves the
// concatenated layout ([..., 2d]: up starts d elements after gate) and two tensors.
//
// The fast path needs d and both row strides to be whole numbers of packs and 16-byte
// aligned pointers; anything else takes the scalar path.

#include "pack.cuh"

namespace autolab_kernels {
namespace {

__device__ __forceinline__ float silu_mul(float g, float u) {
  // __fdividef returns 0 when 1 + exp(-g) overflows past 2^126, the right limit.
  return __fdividef(g, 1.0f + __expf(-g)) * u;
}

template <typename T, int UNROLL, bool STREAM>
__global__ void silu_mul_vec_kernel(T* __restrict__ out, const T* __restrict__ gate,
                                    const T* __restrict__ up, int64_t rows, int64_t nvec,
                                    int64_t gate_stride, int64_t up_stride,
                                    int64_t out_stride) {
  using P = Pack<T>;
  // Strides are in packs. blockIdx.y walks rows (grid-stride: gridDim.y is capped).
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x * UNROLL + threadIdx.x;
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const uint4* g = reinterpret_cast<const uint4*>(gate) + row * gate_stride;
    const uint4* u = reinterpret_cast<const uint4*>(up) + row * up_stride;
    uint4* o = reinterpret_cast<uint4*>(out) + row * out_stride;
    uint4 a[UNROLL], b[UNROLL];
#pragma unroll
    for (int k = 0; k < UNROLL; ++k) {
      const int64_t idx = first + static_cast<int64_t>(k) * blockDim.x;
      if (idx < nvec) {
        a[k] = load_pack<STREAM>(g + idx);
        b[k] = load_pack<STREAM>(u + idx);
      }
    }
#pragma unroll
    for (int k = 0; k < UNROLL; ++k) {
      const int64_t idx = first + static_cast<int64_t>(k) * blockDim.x;
      if (idx < nvec) {
        float fa[P::N], fb[P::N];
        P::unpack(a[k], fa);
        P::unpack(b[k], fb);
#pragma unroll
        for (int e = 0; e < P::N; ++e) fa[e] = silu_mul(fa[e], fb[e]);
        store_pack<STREAM>(o + idx, P::pack(fa));
      }
    }
  }
}

template <typename T>
__global__ void silu_mul_scalar_kernel(T* __restrict__ out, const T* __restrict__ gate,
                                       const T* __restrict__ up, int64_t rows, int64_t d,
                                       int64_t gate_stride, int64_t up_stride,
                                       int64_t out_stride) {
  using P = Pack<T>;
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < d;
         c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const float g = P::to_float(gate[row * gate_stride + c]);
      const float u = P::to_float(up[row * up_stride + c]);
      out[row * out_stride + c] = P::from_float(silu_mul(g, u));
    }
  }
}

constexpr int64_t kMaxGridY = 65535;

template <typename T, bool STREAM>
cudaError_t launch_vec(T* out, const T* gate, const T* up, int64_t rows, int64_t nvec,
                       int64_t gs, int64_t us, int64_t os, int block, int unroll,
                       cudaStream_t stream) {
  const int64_t per_block = static_cast<int64_t>(block) * unroll;
  const int64_t gx = (nvec + per_block - 1) / per_block;
  if (gx > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(gx),
                  static_cast<unsigned>(rows < kMaxGridY ? rows : kMaxGridY));
  switch (unroll) {
    case 1: silu_mul_vec_kernel<T, 1, STREAM><<<grid, block, 0, stream>>>(out, gate, up, rows, nvec, gs, us, os); break;
    case 2: silu_mul_vec_kernel<T, 2, STREAM><<<grid, block, 0, stream>>>(out, gate, up, rows, nvec, gs, us, os); break;
    case 4: silu_mul_vec_kernel<T, 4, STREAM><<<grid, block, 0, stream>>>(out, gate, up, rows, nvec, gs, us, os); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch(void* out_, const void* gate_, const void* up_, int64_t rows, int64_t d,
                   int64_t gate_stride, int64_t up_stride, int64_t out_stride, int block,
                   int unroll, int stream_hint, cudaStream_t stream) {
  T* out = static_cast<T*>(out_);
  const T* gate = static_cast<const T*>(gate_);
  const T* up = static_cast<const T*>(up_);
  if (rows <= 0 || d <= 0) return cudaSuccess;
  constexpr int N = Pack<T>::N;
  const bool packed = d % N == 0 && gate_stride % N == 0 && up_stride % N == 0 &&
                      out_stride % N == 0 && aligned16(out) && aligned16(gate) && aligned16(up);
  if (block <= 0) block = 256;
  // One pack of gate and of up a thread: as fast as 2 or 4 on an H200 (block 128-512,
  // 277.7-280.1 us at 16384 x 2 x 12288 bf16), the fewest registers.
  if (unroll <= 0) unroll = 1;
  if (block > 1024 || block % 32 != 0) return cudaErrorInvalidValue;
  if (packed) {
    const int64_t nvec = d / N;
    return stream_hint != 0
               ? launch_vec<T, true>(out, gate, up, rows, nvec, gate_stride / N, up_stride / N,
                                     out_stride / N, block, unroll, stream)
               : launch_vec<T, false>(out, gate, up, rows, nvec, gate_stride / N, up_stride / N,
                                      out_stride / N, block, unroll, stream);
  }
  const int64_t gx = (d + block - 1) / block;
  const dim3 grid(static_cast<unsigned>(gx < 65535 ? gx : 65535),
                  static_cast<unsigned>(rows < kMaxGridY ? rows : kMaxGridY));
  silu_mul_scalar_kernel<T><<<grid, block, 0, stream>>>(out, gate, up, rows, d, gate_stride,
                                                        up_stride, out_stride);
  return cudaGetLastError();
}

}  // namespace
}  // namespace autolab_kernels

// C entry point, free of PyTorch types. Strides are in elements, between consecutive
// rows. block, unroll <= 0 pick the defaults; stream_hint != 0 uses streaming
// (evict-first) loads and stores.
extern "C" int autolab_silu_mul_launch(void* out, const void* gate, const void* up, int64_t rows,
                                       int64_t d, int64_t gate_stride, int64_t up_stride,
                                       int64_t out_stride, int dtype, int block, int unroll,
                                       int stream_hint, cudaStream_t stream) {
  using namespace autolab_kernels;
  switch (dtype) {
    case kFloat32:
      return launch<float>(out, gate, up, rows, d, gate_stride, up_stride, out_stride, block,
                           unroll, stream_hint, stream);
    case kFloat16:
      return launch<__half>(out, gate, up, rows, d, gate_stride, up_stride, out_stride, block,
                            unroll, stream_hint, stream);
    case kBFloat16:
      return launch<__nv_bfloat16>(out, gate, up, rows, d, gate_stride, up_stride, out_stride,
                                   block, unroll, stream_hint, stream);
    default:
      return cudaErrorInvalidValue;
  }
}
