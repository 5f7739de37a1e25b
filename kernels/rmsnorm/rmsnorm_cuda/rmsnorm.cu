// RMSNorm over the last dimension: out = x * rsqrt(mean(x^2) + eps) * weight.
//
// Memory-bound: the floor is one read of x and one write of out. The fast path reads
// each row once into registers as 16-byte packs (one pass), reduces the sum of squares
// inside a group of `tpr` threads (warp shuffles, plus shared memory when a group
// spans several warps), then scales and writes the packs back. Accumulation and the
// scaling are in float32; each output element is rounded once.
//
// The fast path needs cols to be a whole number of packs and 16-byte aligned
// pointers; anything else takes the scalar path, which is correct for every shape.

#include "pack.cuh"

namespace autolab_kernels {
namespace {

// Blocks of up to 1024 threads cap a thread at 64 registers, too few to hold 8 or 16
// packs without spilling: those variants run in blocks of at most 256 threads.
template <int VPT>
constexpr int max_block() { return VPT >= 8 ? 256 : 1024; }

template <typename T, int VPT, bool STREAM>
__global__ void __launch_bounds__(max_block<VPT>())
rmsnorm_vec_kernel(T* __restrict__ out, const T* __restrict__ x, const T* __restrict__ w,
                   int64_t rows, int nvec, int tpr, float inv_cols, float eps) {
  using P = Pack<T>;
  __shared__ float partial[32];
  const int groups = blockDim.x / tpr;
  const int g = threadIdx.x / tpr;
  const int lane = threadIdx.x - g * tpr;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * groups + g;
  // Threads past the last row still take part in the shuffles and the barrier.
  const bool valid = row < rows;
  const int64_t base = (valid ? row : 0) * nvec;
  const uint4* xr = reinterpret_cast<const uint4*>(x) + base;

  uint4 v[VPT];
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int idx = i * tpr + lane;
    v[i] = (valid && idx < nvec) ? load_pack<STREAM>(xr + idx) : make_uint4(0, 0, 0, 0);
  }
  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    float f[P::N];
    P::unpack(v[i], f);
#pragma unroll
    for (int k = 0; k < P::N; ++k) ss = fmaf(f[k], f[k], ss);
  }
  // Reduce inside the group: shuffles within a warp (groups of tpr <= 32 are aligned
  // lane ranges, so xor offsets below tpr stay inside the group), then across warps.
  const int width = tpr < 32 ? tpr : 32;
  for (int o = width >> 1; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if (tpr > 32) {
    const int warp = threadIdx.x >> 5;
    if ((threadIdx.x & 31) == 0) partial[warp] = ss;
    __syncthreads();
    const int per_group = tpr >> 5;
    ss = 0.f;
    for (int k = 0; k < per_group; ++k) ss += partial[g * per_group + k];
  }
  const float r = rsqrtf(ss * inv_cols + eps);

  const uint4* wv = reinterpret_cast<const uint4*>(w);
  uint4* orow = reinterpret_cast<uint4*>(out) + base;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int idx = i * tpr + lane;
    if (valid && idx < nvec) {
      float f[P::N], s[P::N];
      P::unpack(v[i], f);
      P::unpack(__ldg(wv + idx), s);
#pragma unroll
      for (int k = 0; k < P::N; ++k) f[k] = f[k] * r * s[k];
      store_pack<STREAM>(orow + idx, P::pack(f));
    }
  }
}

// Any shape and alignment: one block per row, scalar accesses, x read twice (the
// second read mostly hits L1/L2).
template <typename T>
__global__ void rmsnorm_scalar_kernel(T* __restrict__ out, const T* __restrict__ x,
                                      const T* __restrict__ w, int64_t rows, int64_t cols,
                                      float inv_cols, float eps) {
  using P = Pack<T>;
  __shared__ float partial[32];
  __shared__ float scale;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * cols;
    float ss = 0.f;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      const float f = P::to_float(xr[c]);
      ss = fmaf(f, f, ss);
    }
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = ss;
    __syncthreads();
    if (threadIdx.x == 0) {
      float t = 0.f;
      for (int k = 0; k < static_cast<int>(blockDim.x >> 5); ++k) t += partial[k];
      scale = rsqrtf(t * inv_cols + eps);
    }
    __syncthreads();
    const float r = scale;
    T* orow = out + row * cols;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      orow[c] = P::from_float(P::to_float(xr[c]) * r * P::to_float(w[c]));
    }
    __syncthreads();  // `partial` and `scale` are reused by the next row
  }
}

int pow2_ceil(int v) {
  int p = 1;
  while (p < v) p <<= 1;
  return p;
}

template <typename T, bool STREAM>
cudaError_t launch_vec(T* out, const T* x, const T* w, int64_t rows, int nvec, int tpr, int vpt,
                       int block, float inv_cols, float eps, cudaStream_t stream) {
  const int groups = block / tpr;
  const int64_t grid = (rows + groups - 1) / groups;
  if (grid > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const dim3 g(static_cast<unsigned>(grid)), b(block);
  switch (vpt) {
    case 1: rmsnorm_vec_kernel<T, 1, STREAM><<<g, b, 0, stream>>>(out, x, w, rows, nvec, tpr, inv_cols, eps); break;
    case 2: rmsnorm_vec_kernel<T, 2, STREAM><<<g, b, 0, stream>>>(out, x, w, rows, nvec, tpr, inv_cols, eps); break;
    case 4: rmsnorm_vec_kernel<T, 4, STREAM><<<g, b, 0, stream>>>(out, x, w, rows, nvec, tpr, inv_cols, eps); break;
    case 8: rmsnorm_vec_kernel<T, 8, STREAM><<<g, b, 0, stream>>>(out, x, w, rows, nvec, tpr, inv_cols, eps); break;
    case 16: rmsnorm_vec_kernel<T, 16, STREAM><<<g, b, 0, stream>>>(out, x, w, rows, nvec, tpr, inv_cols, eps); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch(void* out_, const void* x_, const void* w_, int64_t rows, int64_t cols,
                   float eps, int tpr, int vpt, int block, int stream_hint, cudaStream_t stream) {
  T* out = static_cast<T*>(out_);
  const T* x = static_cast<const T*>(x_);
  const T* w = static_cast<const T*>(w_);
  if (rows <= 0 || cols <= 0) return cudaSuccess;
  const float inv_cols = 1.0f / static_cast<float>(cols);
  constexpr int N = Pack<T>::N;
  const bool packed = cols % N == 0 && aligned16(out) && aligned16(x) && aligned16(w) &&
                      cols / N <= 4096;
  if (packed) {
    const int nvec = static_cast<int>(cols / N);
    if (tpr <= 0) {
      // Default: about 4 packs a thread (several 16-byte loads in flight each, at
      // ~60 registers so an SM holds its full 2048 threads), a group of up to 1024
      // threads per row.
      tpr = pow2_ceil((nvec + 3) / 4);
      if (tpr > 1024) tpr = 1024;
    }
    if (vpt <= 0) vpt = pow2_ceil((nvec + tpr - 1) / tpr);
    if (block <= 0) block = tpr > 256 ? tpr : 256;
    const int block_cap = vpt >= 8 ? 256 : 1024;
    const bool ok = tpr <= 1024 && (tpr & (tpr - 1)) == 0 && (vpt & (vpt - 1)) == 0 &&
                    vpt <= 16 && block % tpr == 0 && block <= block_cap && block % 32 == 0 &&
                    static_cast<int64_t>(tpr) * vpt >= nvec;
    if (ok) {
      return stream_hint != 0
                 ? launch_vec<T, true>(out, x, w, rows, nvec, tpr, vpt, block, inv_cols, eps, stream)
                 : launch_vec<T, false>(out, x, w, rows, nvec, tpr, vpt, block, inv_cols, eps, stream);
    }
    return cudaErrorInvalidValue;
  }
  const int64_t grid = rows < 65535 * 32 ? rows : 65535 * 32;
  rmsnorm_scalar_kernel<T><<<static_cast<unsigned>(grid), 256, 0, stream>>>(out, x, w, rows, cols,
                                                                            inv_cols, eps);
  return cudaGetLastError();
}

}  // namespace
}  // namespace autolab_kernels

// C entry point, free of PyTorch types. tpr, vpt, block <= 0 pick the defaults;
// stream_hint != 0 uses streaming (evict-first) loads and stores.
extern "C" int autolab_rmsnorm_launch(void* out, const void* x, const void* w, int64_t rows,
                                      int64_t cols, float eps, int dtype, int tpr, int vpt,
                                      int block, int stream_hint, cudaStream_t stream) {
  using namespace autolab_kernels;
  switch (dtype) {
    case kFloat32:
      return launch<float>(out, x, w, rows, cols, eps, tpr, vpt, block, stream_hint, stream);
    case kFloat16:
      return launch<__half>(out, x, w, rows, cols, eps, tpr, vpt, block, stream_hint, stream);
    case kBFloat16:
      return launch<__nv_bfloat16>(out, x, w, rows, cols, eps, tpr, vpt, block, stream_hint,
                                   stream);
    default:
      return cudaErrorInvalidValue;
  }
}
